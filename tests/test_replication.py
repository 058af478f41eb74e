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
from streamflow.transports.kafka import KafkaTransport, _replication
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
    assert capped == ["replication_factor 3 asked for (the setting replication_factor), but "
                      "the Kafka cluster has 1 live broker(s): topics created now get 1 "
                      "replica(s). Start more brokers, or set replication_factor to at most 1 "
                      "to silence this."]
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


@pytest.mark.kafka
async def test_existing_topics_need_no_right_to_read_the_brokers_settings(
        kafka_bootstrap: str, namespace: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A worker without DescribeConfigs on the cluster starts on topics that exist; only a
    topic it must create needs the broker's default (or the setting)."""
    t = KafkaTransport(kafka_bootstrap, partitions=1)
    await t.start()
    try:
        await t.ensure_topics([f"{namespace}.there"])

        async def denied(*_: object) -> tuple[str | None, str]:
            return None, "Cluster authorization failed."

        monkeypatch.setattr(_replication, "_broker_config", denied)
        await t.ensure_topics([f"{namespace}.there"])
        await KafkaTransport(kafka_bootstrap, replication=Replication(1)).ensure_topics(
            [f"{namespace}.there"])
        with pytest.raises(TransportError, match=r"cannot read default\.replication\.factor of "
                                                 r"Kafka broker \d+ \(Cluster authorization "
                                                 r"failed\.\): set replication_factor"):
            await t.ensure_topics([f"{namespace}.new"])
    finally:
        await t.close()


@pytest.mark.kafka
@pytest.mark.parametrize("broker_min_isr", ["2", None])
async def test_a_capped_factor_caps_the_brokers_min_insync_too(
        kafka_bootstrap: str, namespace: str, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture, broker_min_isr: str | None) -> None:
    """A cluster with min.insync.replicas=2 and one broker left: a topic made with one replica
    must not keep 2, or every acks=all write to it would fail. None: the broker's value cannot
    be read (no right), so the topic gets at most its replicas all the same."""
    real = _replication._broker_config

    async def cluster_like(admin: AIOKafkaAdminClient, node: int,
                           key: str) -> tuple[str | None, str]:
        if key == "min.insync.replicas":
            return broker_min_isr, "Cluster authorization failed."
        return await real(admin, node, key)

    monkeypatch.setattr(_replication, "_broker_config", cluster_like)
    t = KafkaTransport(kafka_bootstrap, partitions=1, replication=Replication(3))
    await t.start()
    try:
        with caplog.at_level(logging.WARNING, logger="streamflow.transports.kafka"):
            await t.ensure_topics([f"{namespace}.a"])
            await t.ensure_topics([f"{namespace}.b"])  # computed again, said once
    finally:
        await t.close()
    for name in ("a", "b"):
        assert await _replicas(kafka_bootstrap, f"{namespace}.{name}") == ({1}, "1")
    said = [r.getMessage() for r in caplog.records if "min.insync.replicas" in r.getMessage()]
    assert said == [
        "the broker's min.insync.replicas 2 is above the 1 replica(s) topics created now get: "
        "they get min.insync.replicas=1, or no acks=all write could succeed"
        if broker_min_isr else
        "cannot read min.insync.replicas of Kafka broker 1 (Cluster authorization failed.): "
        "topics created now with 1 replica(s) get min.insync.replicas=1, at most their "
        "replicas, or no acks=all write could succeed; set min_insync_replicas to choose it"]
