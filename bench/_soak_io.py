"""Kafka side of ``python -m bench soak``: feeding the input, following the worker's progress
by its committed offsets, and reading the compacted changelogs back for live state bytes.

Progress is the sum of the offsets the three stages' consumer groups committed on their
input topics: records handled and committed, read from the broker, so the worker pays
nothing for it and a restarted worker carries on from the same count.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient

from . import _soak_pipeline as sp
from ._kafka import client_options
from ._readback import Batch, read_all

INPUTS = {"enrich": ["items"], "join": list(sp.BARRIER_INPUTS), "tumble": ["ticks"]}
AHEAD = 60_000
"""The most records the feed runs ahead of what the worker has committed."""
CHUNK = 5_000


class Progress:
    """Records the stages have committed, polled from the broker every ``every`` seconds."""

    def __init__(self, bootstrap: str, ns: str, every: float = 0.2) -> None:
        self.bootstrap, self.ns, self.every = bootstrap, ns, every
        self.processed = 0
        self.changed = asyncio.Event()
        self._admin: AIOKafkaAdminClient | None = None
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._admin = AIOKafkaAdminClient(**client_options(self.bootstrap))
        await self._admin.start()
        self._task = asyncio.create_task(self._poll())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        if self._admin is not None:
            await self._admin.close()

    async def committed(self) -> int:
        assert self._admin is not None
        total = 0
        for stage, assets in INPUTS.items():
            topics = {f"{self.ns}.{a}" for a in assets}
            offsets = await self._admin.list_consumer_group_offsets(f"{self.ns}.stage.{stage}")
            total += sum(max(0, om.offset) for tp, om in offsets.items() if tp.topic in topics)
        return total

    async def _poll(self) -> None:
        while True:
            try:
                n = await self.committed()
            except Exception:
                n = self.processed
            if n != self.processed:
                self.processed = n
                self.changed.set()
            await asyncio.sleep(self.every)

    async def reach(self, n: int, timeout: float) -> bool:
        """Wait until ``n`` records are committed (True), or ``timeout`` seconds pass."""
        deadline = time.perf_counter() + timeout
        while self.processed < n:
            left = deadline - time.perf_counter()
            if left <= 0:
                return False
            self.changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.changed.wait(), min(left, 1.0))
        return True


class Feed:
    """Produces the run's records in order, at most ``AHEAD`` past the committed count."""

    def __init__(self, bootstrap: str, ns: str, partitions: int) -> None:
        self.bootstrap, self.ns, self.partitions = bootstrap, ns, partitions
        self.sent = 0
        self._producer = AIOKafkaProducer(**client_options(bootstrap), linger_ms=5, acks="all",
                                          max_batch_size=512 * 1024, enable_idempotence=True)

    async def start(self) -> None:
        await self._producer.start()

    async def stop(self) -> None:
        await self._producer.stop()

    async def to(self, hi: int, progress: Progress, stop: asyncio.Event | None = None) -> None:
        """Send up to record ``hi`` (a multiple of ``sp.BLOCK``), or until ``stop``."""
        while self.sent < hi and not (stop is not None and stop.is_set()):
            room = progress.processed + AHEAD - self.sent
            if room < CHUNK:
                progress.changed.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(progress.changed.wait(), 1.0)
                continue
            end = min(hi, self.sent + room - room % sp.BLOCK)
            end = min(end, self.sent + CHUNK)
            await self._send(self.sent, end)
            self.sent = end

    async def _send(self, lo: int, hi: int) -> None:
        batches: dict[tuple[str, int], Any] = {}
        futs: list[asyncio.Future[Any]] = []
        for r in sp.records(lo, hi, self.partitions):
            dest = (f"{self.ns}.{r.asset}", r.partition)
            b = batches.get(dest)
            if b is None:
                b = batches[dest] = self._producer.create_batch()
            if b.append(key=r.key, value=r.value, timestamp=None, headers=r.headers) is None:
                futs.append(await self._producer.send_batch(b, dest[0], partition=dest[1]))
                b = batches[dest] = self._producer.create_batch()
                b.append(key=r.key, value=r.value, timestamp=None, headers=r.headers)
        for (topic, part), b in batches.items():
            futs.append(await self._producer.send_batch(b, topic, partition=part))
        await asyncio.gather(*futs)


@dataclass
class Changelog:
    """What the compacted topics hold: latest non-tombstone value bytes per key, per topic,
    and the run-ledger entries a starting worker reads (every message, every v2 entry)."""

    live_bytes: dict[str, int] = field(default_factory=dict)
    ledger_messages: int = 0
    ledger_entries: int = 0

    @property
    def total_mb(self) -> float:
        return sum(self.live_bytes.values()) / 1e6


async def read_changelogs(bootstrap: str, ns: str, partitions: int) -> Changelog:
    """Reads the state topics and both ledger topics whole, up to their end offsets now."""
    out = Changelog()
    # The ledger's retained part counts too: it is the engine's, kept for ledger_retention_s.
    for topic in [f"{ns}.state.join", f"{ns}.state.tumble", f"{ns}.runs", f"{ns}.runs.done"]:
        latest: dict[bytes | None, int] = {}
        ledger = topic.endswith((".runs", ".runs.done"))

        def fold(msgs: Batch, latest: dict[bytes | None, int] = latest,
                 ledger: bool = ledger) -> None:
            for m in msgs:
                if m.value is None:
                    latest.pop(m.key, None)
                    continue
                latest[m.key] = len(m.value)
                if ledger:
                    out.ledger_messages += 1
                    out.ledger_entries += _entries(m.value)

        await read_all(bootstrap, topic, partitions, fold)
        out.live_bytes[topic[len(ns) + 1:]] = sum(latest.values())
    return out


def _entries(value: bytes) -> int:
    """Run records in one ledger message: a v2 batch's entries, or one (v1)."""
    d = orjson.loads(value)
    runs = d.get("runs") if isinstance(d, dict) else None
    return len(runs) if isinstance(runs, list) else 1
