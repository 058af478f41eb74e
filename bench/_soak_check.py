"""What a soak run wrote, read back whole under read_committed once the worker has stopped:
every map and barrier output once, every closed window once with every one of its ticks,
and no dead letter."""

from __future__ import annotations

from collections import Counter

import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition

from . import _soak_pipeline as sp
from ._kafka import client_options
from ._met import count_check
from ._readback import Batch, key_counts, read_all


def window_problems(expected: dict[str, int], got: Counter[str],
                    ticks: dict[str, int]) -> list[str]:
    """Closed windows missing, twice, unexpected, or short of (or over) their ticks."""
    out: list[str] = []
    missing = set(expected) - set(got)
    extra = set(got) - set(expected)
    twice = sum(c - 1 for c in got.values() if c > 1)
    if missing:
        out.append(f"missing {len(missing):,} of {len(expected):,} windows "
                   f"(e.g. {sorted(missing)[:3]})")
    if extra:
        out.append(f"{len(extra):,} unexpected windows (e.g. {sorted(extra)[:3]})")
    if twice:
        out.append(f"{twice:,} duplicate windows")
    wrong = [k for k, n in expected.items() if k in ticks and ticks[k] != n]
    if wrong:
        k = wrong[0]
        out.append(f"{len(wrong):,} windows with the wrong number of ticks "
                   f"(e.g. {k}: {ticks[k]} of {expected[k]})")
    return out


async def _windows(bootstrap: str, topic: str, partitions: int
                   ) -> tuple[Counter[str], dict[str, int]]:
    got: Counter[str] = Counter()
    ticks: dict[str, int] = {}

    def take(msgs: Batch) -> None:
        for m in msgs:
            if m.value is None:
                continue
            d = orjson.loads(m.value)
            got[str(d["key"])] += 1
            ticks[str(d["key"])] = int(d["count"])

    await read_all(bootstrap, topic, partitions, take)
    return got, ticks


async def _count(bootstrap: str, topic: str) -> int:
    """Records in ``topic`` (all its partitions), from its offsets."""
    consumer = AIOKafkaConsumer(**client_options(bootstrap), enable_auto_commit=False)
    await consumer.start()
    try:
        parts = consumer.partitions_for_topic(topic) or set()
        if not parts:
            await consumer.topics()
            parts = consumer.partitions_for_topic(topic) or set()
        tps = [TopicPartition(topic, p) for p in parts]
        if not tps:
            return 0
        begin, end = await consumer.beginning_offsets(tps), await consumer.end_offsets(tps)
        return int(sum(end[tp] - begin[tp] for tp in tps))
    finally:
        await consumer.stop()


async def check_outputs(bootstrap: str, ns: str, partitions: int,
                        total: int) -> tuple[list[str], int]:
    """(what was lost, duplicated or dead-lettered; windows closed)."""
    problems: list[str] = []
    for asset, want in sp.expected_counts(total).items():
        counts = await key_counts(bootstrap, f"{ns}.{asset}", partitions)
        problems += [f"{asset}: {p['detail']}" for p in count_check(
            want, sum(counts.values()), len(counts), what="records")]
    got, ticks = await _windows(bootstrap, f"{ns}.tallies", partitions)
    problems += [f"tallies: {p}" for p in window_problems(
        sp.expected_windows(total, partitions), got, ticks)]
    dead = await _count(bootstrap, f"{ns}.dead-letters")
    if dead:
        problems.append(f"{dead:,} dead letters (late, or over a window's max_records)")
    return problems, len(got)
