"""The Kafka client's one reach into aiokafka's internals, on the real broker: a poll split by
topic (a stage reading its backfill lane apart from live input) shortens the fetcher's
prefetch backoff, so live records are fetched while lane records wait; a whole poll restores
aiokafka's default. aiokafka is pinned; if it renames the attribute, this fails."""

from __future__ import annotations

import inspect
import logging

import pytest
from aiokafka.consumer.fetcher import Fetcher

from streamflow.model import OutMessage
from streamflow.transports import KafkaTransport
from streamflow.transports.kafka._client import PREFETCH_BACKOFF_S, SPLIT_PREFETCH_BACKOFF_S

pytestmark = pytest.mark.kafka


def test_the_default_we_restore_is_aiokafkas() -> None:
    params = inspect.signature(Fetcher.__init__).parameters
    assert params["prefetch_backoff"].default == PREFETCH_BACKOFF_S
    assert SPLIT_PREFETCH_BACKOFF_S < PREFETCH_BACKOFF_S


async def test_split_polls_shorten_the_prefetch_backoff_and_whole_polls_restore_it(
        kafka_bootstrap: str, namespace: str) -> None:
    live, lane = f"{namespace}.live", f"{namespace}.backfill.live"
    t = KafkaTransport(kafka_bootstrap, partitions=1)
    await t.start()
    try:
        await t.ensure_topics([live, lane])
        await t.publish([OutMessage(live, b"1", b"k"), OutMessage(lane, b"2", b"k")])
        sub = await t.subscribe(f"{namespace}.stage.s", [live, lane])
        fetcher = sub.consumer._fetcher  # type: ignore[union-attr]
        got = []
        for _ in range(40):  # until assigned and both records fetched
            got += await sub.poll(10, timeout=0.25, topics={lane})
            if got:
                break
        assert [m.topic for m in got] == [lane]
        assert fetcher._prefetch_backoff == SPLIT_PREFETCH_BACKOFF_S
        rest = await sub.poll(10, timeout=1.0)
        assert [m.topic for m in rest] == [live]
        assert fetcher._prefetch_backoff == PREFETCH_BACKOFF_S
    finally:
        await t.close()


async def test_long_lived_readers_keep_metadata_of_their_topics_only(
        kafka_bootstrap: str, namespace: str) -> None:
    """A client tracking no topic refreshes every topic of the cluster: a worker's memory
    would follow the cluster's size (thousands of topics: 6,000 partition records a probe)."""
    a, b = f"{namespace}.a", f"{namespace}.b"
    t = KafkaTransport(kafka_bootstrap, partitions=2)
    await t.start()
    tail = None
    try:
        await t.ensure_topics([a, b, f"{namespace}.other"])
        assert set(await t.end_offsets(a)) == {0, 1}
        assert set(await t.committed(f"{namespace}.g", b)) == {0, 1}
        assert t._probes[None]._client.cluster.topics() == {a}
        assert t._probes[f"{namespace}.g"]._client.cluster.topics() == {b}
        tail = await t.follow(b)
        assert tail.consumer._client.cluster.topics() == {b}
    finally:
        if tail is not None:
            await tail.close()
        await t.close()


async def test_probing_a_topic_that_does_not_exist_yet_logs_no_error(
        kafka_bootstrap: str, namespace: str, caplog: pytest.LogCaptureFixture) -> None:
    """A changelog or control topic is read before its first write, and a topic's metadata
    lags its creation: aiokafka's "not found" ERROR for those made benchmark runs with a fresh
    namespace count as broken. (The dev broker auto-creates a probed topic; a production one
    does not, and the probe then finds no partitions.)"""
    t = KafkaTransport(kafka_bootstrap, partitions=1)
    await t.start()
    try:
        with caplog.at_level(logging.INFO, logger="aiokafka"):
            for i in range(5):
                fresh = [f"{namespace}.fresh{i}.{n}" for n in range(4)]
                await t.ensure_topics(fresh[:2], compacted=fresh[2:])
                for topic in fresh:
                    assert await t.end_offsets(topic) == {0: 0}
                await t.end_offsets(f"{namespace}.never{i}")
                assert await t.read_topic(f"{namespace}.never-read{i}") == []
        assert not [r for r in caplog.records if r.levelno >= logging.ERROR], caplog.text
    finally:
        await t.close()
