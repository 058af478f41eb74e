"""Replication of the topics StreamFlow creates (issue #19 item 3), on the single dev broker:
the settings' validation, the broker's default, and a factor the cluster cannot give. What
needs several brokers (a topic below the setting, three replicas) is in tests/cluster."""

from __future__ import annotations

import logging

import pytest
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

from streamflow import Settings
from streamflow.errors import ConfigError, TransportError
from streamflow.transports import make_transport
from streamflow.transports.kafka import KafkaTransport
from streamflow.transports.kafka._replication import Replication, create

pytestmark = pytest.mark.timeout(120)


def test_settings_take_replication_from_the_environment(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STREAMFLOW_REPLICATION_FACTOR", "3")
    monkeypatch.setenv("STREAMFLOW_MIN_INSYNC_REPLICAS", "2")
    s = Settings.load()
    assert (s.replication_factor, s.min_insync_replicas) == (3, 2)
    assert Settings().replication_factor is None and Settings().min_insync_replicas is None


@pytest.mark.parametrize(("factor", "insync", "says"), [
    (2, 3, "min_insync_replicas (3) is above replication_factor (2)"),
    (0, None, "replication_factor"),
    (None, 0, "min_insync_replicas"),
])
def test_settings_refuse_impossible_replication(
        monkeypatch: pytest.MonkeyPatch, factor: int | None, insync: int | None,
        says: str) -> None:
    for name, value in (("REPLICATION_FACTOR", factor), ("MIN_INSYNC_REPLICAS", insync)):
        if value is not None:
            monkeypatch.setenv(f"STREAMFLOW_{name}", str(value))
    with pytest.raises(ConfigError, match=says.replace("(", r"\(").replace(")", r"\)")):
        Settings.load()


def test_the_kafka_transport_gets_the_settings() -> None:
    t = make_transport(Settings(kafka_bootstrap="127.0.0.1:9", replication_factor=3,
                                min_insync_replicas=2))
    assert isinstance(t, KafkaTransport)
    assert t.replication == Replication(3, 2)


async def _replicas(bootstrap: str, topic: str) -> tuple[set[int], str | None]:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        [desc] = await admin.describe_topics([topic])
        [resp] = await admin.describe_configs(
            [ConfigResource(ConfigResourceType.TOPIC, topic, {"min.insync.replicas": None})])
        configs = {e[0]: (e[1], e[3]) for r in resp.resources for e in r[4]}
        value, source = configs["min.insync.replicas"]
        return {len(p["replicas"]) for p in desc["partitions"]}, \
            value if source == 1 else None  # 1: set on the topic
    finally:
        await admin.close()


@pytest.mark.kafka
async def test_unset_follows_the_broker_default(kafka_bootstrap: str, namespace: str) -> None:
    t = KafkaTransport(kafka_bootstrap, partitions=1)
    await t.start()
    try:
        await t.ensure_topics([f"{namespace}.plain"])
    finally:
        await t.close()
    assert await _replicas(kafka_bootstrap, f"{namespace}.plain") == ({1}, None)


@pytest.mark.kafka
async def test_a_factor_above_the_brokers_is_capped_with_one_warning(
        kafka_bootstrap: str, namespace: str, caplog: pytest.LogCaptureFixture) -> None:
    """Capped, not refused: one settings file serves a laptop's broker and a cluster."""
    t = KafkaTransport(kafka_bootstrap, partitions=1, replication=Replication(3, 2))
    await t.start()
    try:
        with caplog.at_level(logging.WARNING, logger="streamflow.transports.kafka"):
            await t.ensure_topics([f"{namespace}.a"])
            await t.ensure_topics([f"{namespace}.b"], compacted=[f"{namespace}.c"])
    finally:
        await t.close()
    capped = [r.getMessage() for r in caplog.records if "live broker" in r.getMessage()]
    assert capped == ["replication_factor 3 asked for, but the Kafka cluster has 1 live "
                      "broker(s): topics are created with 1 replica(s). Start more brokers, "
                      "or set replication_factor to at most 1 to silence this."]
    assert any("min_insync_replicas 2 is above the 1 replica(s)" in r.getMessage()
               for r in caplog.records)
    for name in ("a", "b", "c"):
        assert await _replicas(kafka_bootstrap, f"{namespace}.{name}") == ({1}, "1")


@pytest.mark.kafka
async def test_a_topic_the_broker_refuses_is_an_error_naming_it(
        kafka_bootstrap: str, namespace: str) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    await admin.start()
    try:
        with pytest.raises(TransportError, match=rf"refused to create topic {namespace}\.x: "
                                                 r".*replication factor"):
            await create(admin, [NewTopic(f"{namespace}.x", 1, 3)])
        assert f"{namespace}.x" not in await admin.list_topics()
    finally:
        await admin.close()
