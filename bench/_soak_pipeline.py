"""The pipeline of ``python -m bench soak`` and its input, record by record.

Three stages on one worker: ``enrich`` maps ``items``; ``join`` is an ``AllOf`` barrier over
``left``, ``mid`` and ``right`` (every key used once); ``tumble`` is a one-second event-time
``Window`` over ``ticks``. Input is produced straight to Kafka by the benchmark, in blocks of
ten records: five items, one barrier key (its three inputs) and two ticks, so every stretch of
the run carries the same mix (half map, 30% barrier, 20% window). Event time advances with the
block: 10 ms per barrier key and 1 ms per tick, so the barrier's retention and the windows'
closes move all through the run.

The bounded settings of the stages are read from ``BENCH_SOAK_*`` variables (the benchmark
sets them for the worker it starts), so the worker process and the benchmark agree on them.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import orjson
from aiokafka.partitioner import murmur2
from pydantic import BaseModel

from streamflow import AllOf, Asset, Inputs, Pipeline, Window, WindowRecords, stable_id
from streamflow.connectors.testing import IdleSource
from streamflow.model import arrival_headers

BLOCK = 10
"""Records per block: 5 items, 3 barrier inputs (one key), 2 ticks."""
T0_MS = 1_767_225_600_000  # 2026-01-01T00:00:00Z
KEY_STEP_MS = 10
"""Event time between two barrier keys."""
TICK_STEP_MS = 1
"""Event time between two ticks."""
WINDOW_KEYS = 20
"""Partition keys of the window stage: each has one window per second of event time."""
WINDOW_S = 1.0
BARRIER_INPUTS = ("left", "mid", "right")
Headers = list[tuple[str, bytes]]


def env_float(name: str, default: float) -> float:
    return float(os.environ.get(name, "") or default)


BARRIER_RETENTION_S = env_float("BENCH_SOAK_BARRIER_RETENTION_S", 5.0)
WINDOW_MAX_RECORDS = int(env_float("BENCH_SOAK_WINDOW_MAX_RECORDS", 1000))


class Item(BaseModel):
    id: str
    sku: str
    quantity: int
    amount: float


class Enriched(BaseModel):
    id: str
    sku: str
    total: float


class Part(BaseModel):
    k: str
    side: str
    value: int


class Joined(BaseModel):
    k: str
    total: int


class Tick(BaseModel):
    id: str
    w: str
    value: int


class Tally(BaseModel):
    key: str
    w: str
    start_ms: int
    count: int
    total: int


items = Asset("items", Item, key="id")
enriched = Asset("enriched", Enriched, key="id")
sides: list[Asset[Any]] = [Asset(name, Part, key="k") for name in BARRIER_INPUTS]
joined = Asset("joined", Joined, key="k")
ticks = Asset("ticks", Tick, key="id", partition_by="w")
tallies = Asset("tallies", Tally, key="key", partition_by="w")

pipeline = Pipeline("soak")
_inputs: list[Asset[Any]] = [items, *sides, ticks]
for _asset in _inputs:
    pipeline.source(IdleSource(), asset=_asset, name=f"{_asset.name}-src")


@pipeline.stage(inputs=[items], output=enriched, name="enrich")
def enrich(i: Item) -> Enriched:
    return Enriched(id=i.id, sku=i.sku, total=round(i.quantity * i.amount * 1.08, 2))


@pipeline.stage(inputs=sides, output=joined, name="join",
                trigger=AllOf(retention_s=BARRIER_RETENTION_S))
def join(inputs: Inputs) -> Joined:
    parts = [p for p in inputs.values() if isinstance(p, Part)]
    return Joined(k=inputs.partition, total=sum(p.value for p in parts))


@pipeline.stage(inputs=[ticks], output=tallies, name="tumble",
                trigger=Window(size_s=WINDOW_S, max_records=WINDOW_MAX_RECORDS))
def tumble(w: WindowRecords) -> Tally:
    recs = [t for t in w.all() if isinstance(t, Tick)]
    return Tally(key=window_key(w.partition, w.start_ms), w=w.partition, start_ms=w.start_ms,
                 count=len(recs), total=sum(t.value for t in recs))


def window_key(w: str, start_ms: int) -> str:
    return f"{w}@{start_ms}"


@dataclass(frozen=True, slots=True)
class Rec:
    """One input record as produced: its topic's asset, Kafka partition, key, value, headers."""

    asset: str
    partition: int
    key: bytes
    value: bytes
    headers: Headers


def partition_of(partition_key: str, partitions: int) -> int:
    return int(murmur2(partition_key.encode()) & 0x7FFFFFFF) % partitions


def _rec(asset: str, key: str, pkey: str, event_ms: int, value: bytes,
         partitions: int) -> Rec:
    headers = arrival_headers(stable_id(asset, key).encode(), asset.encode(), b"1",
                              pkey.encode(), event_ms, "bench", "live", None)
    return Rec(asset, partition_of(pkey, partitions), key.encode(), value, headers)


def block(b: int, partitions: int) -> Iterator[Rec]:
    """The ten records of block ``b``, in send order."""
    for i in range(5 * b, 5 * b + 5):
        key = f"i{i:08d}"
        yield _rec("items", key, key, T0_MS + i, orjson.dumps(
            {"id": key, "sku": f"sku-{i % 5000}", "quantity": 1 + i % 5,
             "amount": round(1 + (i * 7919 % 50000) / 100, 2)}), partitions)
    k = f"k{b:08d}"
    for n, side in enumerate(BARRIER_INPUTS):
        yield _rec(side, k, k, T0_MS + b * KEY_STEP_MS, orjson.dumps(
            {"k": k, "side": side, "value": b % 100 + n}), partitions)
    for t in range(2 * b, 2 * b + 2):
        w, key = f"w{t % WINDOW_KEYS:02d}", f"t{t:08d}"
        yield _rec("ticks", key, w, T0_MS + t * TICK_STEP_MS, orjson.dumps(
            {"id": key, "w": w, "value": t % 10}), partitions)


def records(lo: int, hi: int, partitions: int) -> Iterator[Rec]:
    """Records ``lo`` to ``hi`` (both multiples of ``BLOCK``) of the run."""
    for b in range(lo // BLOCK, hi // BLOCK):
        yield from block(b, partitions)


def expected_windows(total: int, partitions: int) -> dict[str, int]:
    """The windows a run of ``total`` records closes, each with how many ticks it holds: those
    whose end the watermark of their input partition (its latest tick) has reached."""
    n_ticks = 2 * (total // BLOCK)
    wm: dict[int, int] = {}
    counts: dict[str, int] = {}
    size = int(WINDOW_S * 1000)
    for t in range(n_ticks):
        w, at = f"w{t % WINDOW_KEYS:02d}", T0_MS + t * TICK_STEP_MS
        p = partition_of(w, partitions)
        wm[p] = max(wm.get(p, 0), at)
        key = window_key(w, at - at % size)
        counts[key] = counts.get(key, 0) + 1
    return {k: c for k, c in counts.items()
            if int(k.split("@")[1]) + size <= wm[partition_of(k.split("@")[0], partitions)]}


def expected_counts(total: int) -> dict[str, int]:
    """Outputs per output asset for a run of ``total`` records (windows: see above)."""
    blocks = total // BLOCK
    return {"enriched": 5 * blocks, "joined": blocks}
