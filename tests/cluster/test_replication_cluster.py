"""Replication on three brokers (issue #19 item 3): topics StreamFlow creates get the broker's
default of three replicas, or the setting; an existing topic below the setting gets one
warning."""

from __future__ import annotations

import logging
import uuid

import pytest
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

from streamflow.devservices import delete_topics
from streamflow.transports.kafka import KafkaTransport
from streamflow.transports.kafka._replication import Replication

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(180)]


async def _describe(admin: AIOKafkaAdminClient, topic: str) -> tuple[set[int], str]:
    [desc] = await admin.describe_topics([topic])
    [resp] = await admin.describe_configs(
        [ConfigResource(ConfigResourceType.TOPIC, topic, {"min.insync.replicas": None})])
    [value] = [e[1] for r in resp.resources for e in r[4]]
    return {len(p["replicas"]) for p in desc["partitions"]}, value


async def test_topics_get_the_cluster_default_or_the_setting_and_low_ones_a_warning(
        cluster_bootstrap: str, caplog: pytest.LogCaptureFixture) -> None:
    ns = "r" + uuid.uuid4().hex[:10]
    admin = AIOKafkaAdminClient(bootstrap_servers=cluster_bootstrap)
    await admin.start()
    default = KafkaTransport(cluster_bootstrap, partitions=2)
    asked = KafkaTransport(cluster_bootstrap, partitions=2, replication=Replication(2, 2))
    try:
        await admin.create_topics([NewTopic(f"{ns}.old", 2, 1)])  # made before the setting
        for t in (default, asked):
            await t.start()
        with caplog.at_level(logging.WARNING, logger="streamflow.transports.kafka"):
            # without settings, existing topics are not compared (the broker's defaults
            # need a right a worker that creates nothing may lack)
            await default.ensure_topics([f"{ns}.new", f"{ns}.old"], compacted=[f"{ns}.log"])
            await asked.ensure_topics([f"{ns}.two", f"{ns}.new", f"{ns}.old"])
            await asked.ensure_topics([f"{ns}.old"])  # warned once, not at every call
        assert await _describe(admin, f"{ns}.new") == ({3}, "2")  # the cluster's defaults
        assert await _describe(admin, f"{ns}.log") == ({3}, "2")
        assert await _describe(admin, f"{ns}.two") == ({2}, "2")
        warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
        assert warnings == [
            f"Kafka topic {ns}.old has 1 replica(s), below replication_factor 2: a broker's "
            "loss can lose its records or stop it. Raise it with kafka-reassign-partitions.sh "
            "(a reassignment naming 2 brokers per partition), or delete the topic so "
            "StreamFlow recreates it (its records go with it)."], warnings
    finally:
        for t in (default, asked):
            await t.close()
        await admin.close()
        await delete_topics(cluster_bootstrap, lambda t: t.startswith(ns + "."))


async def test_a_min_insync_below_the_setting_gets_a_warning(
        cluster_bootstrap: str, caplog: pytest.LogCaptureFixture) -> None:
    ns = "r" + uuid.uuid4().hex[:10]
    first = KafkaTransport(cluster_bootstrap, partitions=1)
    t = KafkaTransport(cluster_bootstrap, partitions=1, replication=Replication(3, 3))
    await first.start()
    await t.start()
    try:
        await first.ensure_topics([f"{ns}.a"])  # with the broker's min.insync.replicas, 2
        with caplog.at_level(logging.WARNING, logger="streamflow.transports.kafka"):
            await t.ensure_topics([f"{ns}.a"])
        [warning] = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
        assert warning.startswith(f"Kafka topic {ns}.a has min.insync.replicas=2, below "
                                  "min_insync_replicas 3"), warning
        assert f"--entity-name {ns}.a --add-config min.insync.replicas=3" in warning
    finally:
        await t.close()
        await first.close()
        await delete_topics(cluster_bootstrap, lambda x: x.startswith(ns + "."))
