"""Compacted topics that let a restore skip history (issue 17): the embedded log compacts its
compacted topics itself, and Kafka topics are created with configs that let the cleaner work
during a run."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

from streamflow.model import OutMessage
from streamflow.transports._embedded import TOMBSTONE_RETENTION_MS, EmbeddedTransport
from streamflow.transports.kafka import KafkaTransport
from streamflow.transports.kafka._transport import COMPACTED_CONFIGS

pytestmark = pytest.mark.timeout(120)


async def test_the_embedded_log_keeps_the_latest_record_per_key_of_a_compacted_topic(
    tmp_path: Path
) -> None:
    t = EmbeddedTransport(tmp_path / "log.db")
    await t.start()
    try:
        await t.ensure_topics(["plain"], compacted=["state"])
        await t.publish([OutMessage("state", b"%d" % i, b"k%d" % (i % 3)) for i in range(9)])
        await t.publish([OutMessage("state", b"", b"k0"),   # k0 goes (a tombstone)
                         OutMessage("plain", b"a", b"k"), OutMessage("plain", b"b", b"k")])
        assert await t.compact() == 7  # every version but the last of k0 (a tombstone), k1, k2
        state = await t.read_topic("state")
        assert [(m.key, m.value, m.offset) for m in state] == [
            (b"k1", b"7", 7), (b"k2", b"8", 8), (b"k0", b"", 9)]  # offsets kept
        assert len(await t.read_topic("plain")) == 2, "only compacted topics are compacted"
        assert await t.end_offset("state") == 10

        # A tombstone goes once it is old enough (never the topic's last record).
        await t.publish([OutMessage("state", b"9", b"k1")])
        past = int(time.time() * 1000) - TOMBSTONE_RETENTION_MS - 1
        await t.db.execute("UPDATE log SET ts=? WHERE topic='state'", (past,))
        await t.db.commit()
        assert await t.compact() == 2  # k1's old version and k0's tombstone
        assert [m.key for m in await t.read_topic("state")] == [b"k2", b"k1"]
        assert await t.end_offset("state") == 11
    finally:
        await t.close()

    again = EmbeddedTransport(tmp_path / "log.db")  # the topic is known compacted after restart
    await again.start()
    try:
        await again.publish([OutMessage("state", b"10", b"k2")])
        assert await again.compact() == 1
    finally:
        await again.close()


async def test_kafka_compacted_topics_are_created_so_the_cleaner_works_during_a_run(
    kafka_bootstrap: str, namespace: str
) -> None:
    t = KafkaTransport(kafka_bootstrap, partitions=1)
    await t.start()
    topic = f"{namespace}.state.s"
    try:
        await t.ensure_topics([], compacted=[topic])
    finally:
        await t.close()
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    await admin.start()
    try:
        [resp] = await admin.describe_configs(
            [ConfigResource(ConfigResourceType.TOPIC, topic)])
        configs = {c[0]: c[1] for r in resp.resources for c in r[4]}
    finally:
        await admin.close()
    assert {k: configs[k] for k in COMPACTED_CONFIGS} == COMPACTED_CONFIGS


async def test_topics_are_read_in_chunks_in_log_order(
        tmp_path: Path, kafka_bootstrap: str, namespace: str,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A restore or a ledger fold holds a chunk at a time, never the whole topic."""
    import streamflow.transports._embedded as embedded

    monkeypatch.setattr(embedded, "SCAN_PAGE", 4)
    emb = EmbeddedTransport(tmp_path / "log.db")
    await emb.start()
    try:
        await emb.publish([OutMessage("t", b"%d" % i, b"k") for i in range(10)])
        chunks = [[m.value for m in c] async for c in emb.scan_topic("t")]
    finally:
        await emb.close()
    assert [len(c) for c in chunks] == [4, 4, 2]
    assert [v for c in chunks for v in c] == [b"%d" % i for i in range(10)]

    kt = KafkaTransport(kafka_bootstrap, partitions=1)
    await kt.start()
    topic = f"{namespace}.chunks"
    try:
        await kt.ensure_topics([topic])
        await kt.publish([OutMessage(topic, b"%d" % i, b"k") for i in range(12_000)])
        sizes = [len(c) async for c in kt.scan_topic(topic)]
    finally:
        await kt.close()
    assert sum(sizes) == 12_000 and max(sizes) <= 5000 and len(sizes) >= 3
