"""Reading a benchmark's output topic back, whole, under read_committed: what was written,
so that lost and duplicated records show (``bench/_met.py`` judges them)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.structs import ConsumerRecord

from ._kafka import client_options
from ._met import count_check

Batch = list[ConsumerRecord[bytes, bytes]]


async def read_all(bootstrap: str, topic: str, partitions: int,
                   on_batch: Callable[[Batch], None]) -> None:
    """Hand every committed record of ``topic``, up to its end offsets now, to ``on_batch``.
    ``partitions``: the topic's partition count (the benchmark created it)."""
    consumer = AIOKafkaConsumer(**client_options(bootstrap), isolation_level="read_committed",
                                enable_auto_commit=False, max_partition_fetch_bytes=8 << 20,
                                fetch_max_bytes=32 << 20)
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in range(partitions)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        end = await consumer.end_offsets(tps)
        idle = 0
        while idle < 4 and any([await consumer.position(tp) < end[tp] for tp in tps]):
            got = await consumer.getmany(timeout_ms=500, max_records=20_000)
            idle = 0 if got else idle + 1
            for msgs in got.values():
                on_batch(msgs)
    finally:
        await consumer.stop()


async def read_back(bootstrap: str, topic: str, partitions: int) -> tuple[int, int, list[int]]:
    """(records, distinct keys, sorted append times in ms) of ``topic``, read_committed."""
    keys: set[bytes | None] = set()
    stamps: list[int] = []

    def take(msgs: Batch) -> None:
        keys.update(m.key for m in msgs)
        stamps.extend(m.timestamp for m in msgs)

    await read_all(bootstrap, topic, partitions, take)
    stamps.sort()
    return len(stamps), len(keys), stamps


async def key_counts(bootstrap: str, topic: str, partitions: int) -> Counter[bytes]:
    """How many times each key is in ``topic`` (a record without a key counts as b"")."""
    counts: Counter[bytes] = Counter()

    def take(msgs: Batch) -> None:
        counts.update(m.key or b"" for m in msgs)

    await read_all(bootstrap, topic, partitions, take)
    return counts


async def output_problems(bootstrap: str, topic: str, partitions: int,
                          expected: int) -> list[str]:
    """Lost and duplicated records of a run that should have written ``expected`` records
    with distinct keys to ``topic``: empty when every one is there, once."""
    count, distinct, _ = await read_back(bootstrap, topic, partitions)
    return [p["detail"] for p in count_check(expected, count, distinct, what="records")]
