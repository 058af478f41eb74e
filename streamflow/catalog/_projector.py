"""The projector: the control topics folded into the catalog, batch by batch.

It reads each source partition from the position the catalog records (not one of its own),
so a restarted projector, or a second one on the same database, goes on from the last commit
of either. Idle, it asks each topic for its end only; a topic with news is scanned from the
catalog's position to that end.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from streamflow.model import (
    Settings,
    contracts_topic,
    done_runs_topic,
    hold_topic,
    jobs_topic,
    runs_topic,
)
from streamflow.transports import Transport

from ._rows import Batch, Source, add_message
from ._store import CatalogStore, Position

log = logging.getLogger("streamflow.catalog")

RETRY_S = 5.0
"""How long a follower waits after a failed catch-up."""
MISSING_RECHECK_S = 30.0
"""How often a topic that does not exist yet is looked for again (on Kafka a look waits for
metadata)."""


@dataclass(frozen=True, slots=True)
class Freshness:
    """One source partition: how far the catalog has read it, and how far behind it is."""

    topic: str
    partition: int
    projected: int
    end: int
    lag_records: int
    lag_s: float | None
    """Seconds since the catalog last held all of it; 0 when caught up now; None: never."""


def sources(settings: Settings) -> list[Source]:
    """The control topics every namespace has (hold topics are found as gated stages show)."""
    ns = settings.namespace
    return [Source(runs_topic(ns), "runs", rank=0), Source(done_runs_topic(ns), "runs", rank=1),
            Source(settings.dead_letter_topic, "dead_letters"),
            Source(contracts_topic(ns), "contracts"), Source(jobs_topic(ns), "backfills")]


Progress = Callable[[int, int], None]
"""(messages read, messages to read) as a catch-up goes."""


class Projector:
    """Folds the control topics of one namespace into a ``CatalogStore``."""

    def __init__(self, transport: Transport, store: CatalogStore, settings: Settings,
                 batch_rows: int = 5000, idle_s: float = 0.5) -> None:
        self.transport, self.store, self.settings = transport, store, settings
        self.batch_rows, self.idle_s = batch_rows, idle_s
        self.sources = {s.topic: s for s in sources(settings)}
        self._missing: dict[str, float] = {}
        """Topics not there yet: when they were last looked for."""
        self._gated_read = False
        self.stop = asyncio.Event()
        """Set: a catch-up ends after the batch it is writing (``follow``'s stop)."""

    async def catch_up(self, progress: Progress | None = None) -> int:
        """Every source read from the catalog's positions to its end as of now (and hold
        topics of gated stages found meanwhile); returns the messages read."""
        await self._discover_holds()
        done, total, planned = 0, 0, set[str]()
        idle: dict[tuple[str, int], int] = {}
        """Partitions with nothing to read: fresh as of this catch-up, in one transaction."""
        read_at = int(time.time() * 1000)
        while len(planned) < len(self.sources):
            positions = await self.store.positions()
            plan: list[tuple[Source, dict[int, int], dict[int, int]]] = []
            for source in [s for t, s in self.sources.items() if t not in planned]:
                planned.add(source.topic)
                ends = await self._ends(source.topic)
                start = {p: positions[(source.topic, p)].next_offset for p in ends
                         if (source.topic, p) in positions}
                idle |= {(source.topic, p): e for p, e in ends.items() if start.get(p, 0) >= e}
                plan.append((source, ends, start))
            total += sum(max(0, e - start.get(p, 0)) for _, ends, start in plan
                         for p, e in ends.items())
            for source, ends, start in plan:
                if self.stop.is_set():
                    return done
                if any(start.get(p, 0) < e for p, e in ends.items()):
                    done += await self._scan(source, ends, start, done, total, progress)
        await self.store.mark_caught_up(idle, read_at)
        if progress is not None:
            progress(done, total)
        return done

    async def _ends(self, topic: str) -> dict[int, int]:
        seen = self._missing.get(topic)
        if seen is not None and time.monotonic() - seen < MISSING_RECHECK_S:
            return {}
        ends = await self.transport.end_offsets(topic)
        if ends:
            self._missing.pop(topic, None)
        else:
            self._missing[topic] = time.monotonic()
        return ends

    async def _scan(self, source: Source, ends: dict[int, int], start: dict[int, int],
                    before: int, total: int, progress: Progress | None) -> int:
        read_at = int(time.time() * 1000)
        keyed = {(source.topic, p): e for p, e in ends.items()}
        n, batch, size = 0, Batch(), self.batch_rows
        scan = self.transport.scan_topic(source.topic, from_offsets=start)
        async with contextlib.aclosing(scan):
            async for chunk in scan:
                for m in chunk:
                    add_message(source, m, batch)
                    if batch.size >= size:
                        n += await self._apply(batch, keyed, read_at)
                        batch = Batch()
                        if progress is not None:
                            progress(before + n, total)
                        if self.stop.is_set():  # the rest of the batch is read again
                            return n
        # The scan read everything below each end: offsets with no message (a transaction
        # marker, a compacted gap) are passed too, or the partition would never catch up.
        for (topic, p), end in keyed.items():
            nxt, ts = batch.positions.get((topic, p), (0, 0))
            batch.positions[(topic, p)] = (max(nxt, end), ts)
        return n + await self._apply(batch, keyed, read_at)

    async def _apply(self, batch: Batch, ends: dict[tuple[str, int], int], read_at: int) -> int:
        await self.store.apply(batch, ends, read_at)
        for stage in batch.gated:
            self._hold_source(stage)
        return len(batch)

    async def _discover_holds(self) -> None:
        """Gated stages' hold topics: from the runs already in the catalog (once), then from
        each batch's runs that carry check results."""
        if self._gated_read:
            return
        for (stage,) in await self.store.fetch(
                "SELECT DISTINCT stage FROM runs WHERE checks IS NOT NULL"):
            self._hold_source(str(stage))
        self._gated_read = True

    def _hold_source(self, stage: str) -> None:
        topic = hold_topic(self.settings.namespace, stage)
        if topic not in self.sources:
            self.sources[topic] = Source(topic, "holds", stage=stage)

    async def follow(self, stop: asyncio.Event, report_every_s: float = 30.0) -> None:
        """Catch up, again and again, until ``stop``; prunes past ``catalog_retention_s`` and
        logs the freshness now and then. A long catch-up ends after its current batch."""
        self.stop = stop
        last_report = last_prune = 0.0
        while not stop.is_set():
            try:
                await self.catch_up()
            except Exception as e:  # the broker or the database away: keep following
                log.warning("catalog: a catch-up failed (%s: %s); trying again in %gs",
                            type(e).__name__, e, RETRY_S)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), RETRY_S)
                continue
            now = time.monotonic()
            retention = self.settings.catalog_retention_s
            if retention is not None and now - last_prune >= 60:
                last_prune = now
                gone = await self.store.prune(int((time.time() - retention) * 1000))
                if gone:
                    log.info("catalog: %d rows older than catalog_retention_s went", gone)
            if now - last_report >= report_every_s:
                last_report = now
                there = {t: s for t, s in self.sources.items() if t not in self._missing}
                log_freshness(await freshness(self.transport, self.store, there))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.idle_s)

    async def rebuild(self, progress: Progress | None = None) -> int:
        """Every row gone, then everything the topics still hold folded again."""
        await self.store.reset()
        self._gated_read = False
        return await self.catch_up(progress)


async def freshness(transport: Transport, store: CatalogStore,
                    topics: dict[str, Source] | None = None) -> list[Freshness]:
    """Each source partition the catalog has read, against the topic's end now."""
    positions = await store.positions()
    now_ms = int(time.time() * 1000)
    names = sorted(set(topics or ()) | {t for t, _ in positions})
    out = []
    for topic in names:
        ends = await transport.end_offsets(topic)
        for p, end in sorted(ends.items()):
            pos = positions.get((topic, p), Position(topic, p, 0, 0, 0, 0))
            behind = max(0, end - pos.next_offset)
            lag_s = (0.0 if behind == 0 else None if pos.caught_up_ms == 0
                     else (now_ms - pos.caught_up_ms) / 1000)
            out.append(Freshness(topic, p, pos.next_offset, end, behind, lag_s))
    return out


def log_freshness(rows: list[Freshness]) -> None:
    behind = sum(r.lag_records for r in rows)
    worst = max((r.lag_s for r in rows if r.lag_s is not None), default=0.0)
    never = sum(1 for r in rows if r.lag_s is None)
    log.info("catalog: %d source partitions, %d records behind, %.1fs behind at most%s",
             len(rows), behind, worst, f", {never} never caught up" if never else "")
