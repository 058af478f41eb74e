"""Reading a topic without joining a group: a one-off scan, or a tail that stays open."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncGenerator, Collection, Mapping

from aiokafka import AIOKafkaConsumer, TopicPartition

from streamflow.model import Message

from ._client import KafkaClient


class KafkaTail:
    """One consumer assigned to a topic's partitions: each ``chunks`` reads what is committed
    up to the end offsets of that moment, and the position stays for the next call."""

    def __init__(self, client: KafkaClient, topic: str,
                 partitions: Collection[int] | None = None) -> None:
        self.topic, self.partitions = topic, partitions
        self.consumer = AIOKafkaConsumer(**client.config(
            enable_auto_commit=False, isolation_level="read_committed",
            auto_offset_reset="earliest"))
        self.tps: list[TopicPartition] = []

    async def start(self, since_ms: int | None = None,
                    from_offsets: Mapping[int, int] | None = None) -> bool:
        """Assign and seek (``from_offsets``: these partitions from there, a checkpoint's
        tail); False when there is no partition to read."""
        consumer = self.consumer
        await consumer.start()
        parts = await tracked_partitions(consumer, self.topic)
        self.tps = [TopicPartition(self.topic, p) for p in sorted(parts)
                    if self.partitions is None or p in self.partitions]
        if not self.tps:
            return False
        consumer.assign(self.tps)
        await _seek(consumer, self.tps, since_ms)
        for tp in self.tps:
            if from_offsets is not None and tp.partition in from_offsets:
                consumer.seek(tp, from_offsets[tp.partition])
        return True

    async def chunks(self) -> AsyncGenerator[list[Message], None]:
        consumer, tps = self.consumer, self.tps
        if not tps:
            return
        ends = await consumer.end_offsets(tps)
        while True:
            positions = [await consumer.position(tp) for tp in tps]
            if all(pos >= ends[tp] for pos, tp in zip(positions, tps, strict=True)):
                return
            batches = await consumer.getmany(*tps, timeout_ms=500, max_records=5000)
            chunk = [Message(r.topic, r.partition, r.offset, r.key, r.value or b"",
                             list(r.headers), r.timestamp)
                     for records in batches.values() for r in records]
            if chunk:
                yield chunk

    async def read_new(self) -> list[Message]:
        return [m async for chunk in self.chunks() for m in chunk]

    async def close(self) -> None:
        await self.consumer.stop()


async def _seek(consumer: AIOKafkaConsumer, tps: list[TopicPartition],
                since_ms: int | None) -> None:
    """To the first record at or after ``since_ms`` (the broker's time index), or the start.
    Explicit offsets only: a lazy reset to the end could still meet ``auto_offset_reset``."""
    if since_ms is None:
        await consumer.seek_to_beginning(*tps)
        return
    found = await consumer.offsets_for_times({tp: max(0, since_ms) for tp in tps})
    ends = await consumer.end_offsets(tps)
    for tp in tps:
        at = found.get(tp)
        consumer.seek(tp, at.offset if at is not None else ends[tp])


async def tracked_partitions(consumer: AIOKafkaConsumer, topic: str,
                             wait_s: float = 0.0) -> set[int]:
    """``topic``'s partitions, once the consumer tracks it. A client that tracks no topic
    keeps (and refreshes) the metadata of every topic on the cluster: thousands of partition
    records in each long-lived probe and tail, a worker's memory following the cluster's.
    A refresh already in flight when the topic is added answers without it, and a topic
    created a moment ago may not show yet: refreshed again for up to ``wait_s`` (at least
    once)."""
    client = consumer._client
    quiet_missing([topic])
    await client.add_topic(topic)  # a refresh of the tracked topics only, unless tracked
    loop = asyncio.get_running_loop()
    deadline = loop.time() + wait_s
    parts = consumer.partitions_for_topic(topic)
    while not parts:
        await client.force_metadata_update()
        parts = consumer.partitions_for_topic(topic)
        if parts or loop.time() >= deadline:
            break
        await asyncio.sleep(0.1)
    if parts:
        seen([topic])
    return set(parts or ())


class _MissingProbed(logging.Filter):
    """aiokafka logs an ERROR on every metadata refresh for a tracked topic the cluster does
    not have. A probe asks about topics that may not exist yet (a changelog before its first
    write, a topic being created), and "no partitions" is its answer, not a fault: those
    records are dropped for the topics probed here, and every other topic's still logs."""

    def __init__(self) -> None:
        super().__init__()
        self.topics: set[str] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.msg == "Topic %s not found in cluster metadata"
                    and isinstance(record.args, tuple) and bool(record.args)
                    and record.args[0] in self.topics)


_QUIET_MISSING = _MissingProbed()
logging.getLogger("aiokafka.cluster").addFilter(_QUIET_MISSING)


def quiet_missing(topics: Collection[str]) -> None:
    """Topics this process asks about before they exist (or a moment after creating them):
    quiet until they are first seen (a topic deleted later under a worker logs again)."""
    _QUIET_MISSING.topics.update(topics)


def seen(topics: Collection[str]) -> None:
    _QUIET_MISSING.topics.difference_update(topics)
