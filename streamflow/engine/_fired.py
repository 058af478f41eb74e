"""A stage's fired runs: run ids that reached a final status, so a redelivered or duplicated
input skips its run.

The window of recent ids is shared by the stage's two lanes and bounded (``RecentRuns``). At
start the worker keeps what the ledger holds of that window; a partition that moves here later
brings what its previous owner ran (read from that ledger partition before its first record is
handled). Exactly once, a run fired in a transaction that has not committed is forgotten if
the transaction may be lost.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable
from typing import Any

from streamflow.model import Settings, runs_topic
from streamflow.observability import Metrics
from streamflow.state import done_of, fired_of, fold_topic, merge, read_ledger
from streamflow.transports import Transport

log = logging.getLogger("streamflow.stage")


class RecentRuns:
    """Run ids fired lately, in two generations of a set each, so memory stays bounded.

    The current generation takes every new id; it becomes the previous one (and the previous
    one is dropped whole) once it has run for ``window_s`` or holds ``max_ids`` ids. An id is
    so remembered for the window or for the next ``max_ids`` ids, whichever ends first, at a
    set lookup or two. An input redelivered after that runs again (keyed sinks absorb it).
    """

    __slots__ = ("_clock", "_since", "current", "max_ids", "previous", "window_s")

    def __init__(self, window_s: float, max_ids: int,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.window_s, self.max_ids, self._clock = window_s, max_ids, clock
        self.current: set[str] = set()
        self.previous: set[str] = set()
        self._since = clock()

    def __contains__(self, run_id: object) -> bool:
        return run_id in self.current or run_id in self.previous

    def __len__(self) -> int:
        return len(self.current) + len(self.previous)

    def add(self, run_id: str) -> None:
        self.current.add(run_id)

    def update(self, run_ids: Iterable[str]) -> None:
        for r in run_ids:
            self.current.add(r)
            self.tick()

    def discard(self, run_id: str) -> None:
        self.current.discard(run_id)
        self.previous.discard(run_id)

    def tick(self) -> None:
        """Once per batch (a batch's lookups see the same sets): a generation as old as the
        window, or as full as ``max_ids``, moves on."""
        if len(self.current) >= self.max_ids or self._clock() - self._since >= self.window_s:
            self.rotate()

    def rotate(self) -> None:
        self.previous, self.current = self.current, set()
        self._since = self._clock()


class FiredRuns:
    def __init__(self, fired: RecentRuns, transport: Transport, runs_topic: str,
                 stage: str) -> None:
        self.ids = fired
        self.transport, self.runs_topic, self.stage = transport, runs_topic, stage
        # Run ids fired in a transaction not committed yet, per input partition number.
        self._uncommitted: dict[int, list[str]] = {}
        self._fresh: set[int] | None = None  # partitions whose fired runs are known
        # Fired runs of partitions moved here, being loaded: (partitions, load).
        self._loading: list[tuple[set[int], asyncio.Future[None]]] = []

    def __contains__(self, run_id: str) -> bool:
        return run_id in self.ids

    def add(self, run_id: str, kafka_partition: int, in_transaction: bool) -> None:
        self.ids.add(run_id)
        if in_transaction:
            self._uncommitted.setdefault(kafka_partition, []).append(run_id)

    def assigned(self, partitions: set[int]) -> None:
        if self._fresh is None:  # the first assignment: the worker read the whole ledger
            self._fresh = set(partitions)
        elif partitions - self._fresh:  # moved here: what its previous owner already ran
            moved = partitions - self._fresh
            self._loading.append((moved, asyncio.ensure_future(self._load(moved))))
            self._fresh |= partitions

    def revoked(self, partitions: set[int]) -> None:
        # Its last commit may have failed (the broker away during the rebalance).
        self.unfire(partitions)
        if self._fresh is not None:
            self._fresh -= partitions

    def committed(self) -> None:
        self._uncommitted.clear()

    def unfire(self, partitions: set[int] | None = None) -> None:
        """Fired runs whose transaction may be lost are forgotten; a partition that comes
        back reloads what did commit from the ledger."""
        for p in list(self._uncommitted) if partitions is None else partitions:
            for run_id in self._uncommitted.pop(p, ()):
                self.ids.discard(run_id)

    def rewound(self) -> None:
        self.unfire()
        self._fresh = set()

    async def _load(self, partitions: set[int]) -> None:
        since = int((time.time() - self.ids.window_s) * 1000)
        ledger = await read_ledger(self.transport, self.runs_topic, partitions, since)
        self.ids.update(fired_of(ledger, self.stage, since, self.ids.max_ids))

    async def loaded(self) -> None:
        """Runs a partition's previous owner fired are known before its records run."""
        while self._loading:
            partitions, task = self._loading[0]
            try:
                await task
            except Exception:  # the ledger could not be read (broker gone): read it again
                log.warning("stage %s: loading fired runs failed; retrying", self.stage,
                            exc_info=True)
                await asyncio.sleep(0.5)
                self._loading[0] = (partitions, asyncio.ensure_future(self._load(partitions)))
                continue
            self._loading.pop(0)

    @property
    def loading(self) -> bool:
        return bool(self._loading)


async def load_ledger(transport: Transport, settings: Settings,
                      metrics: Metrics) -> dict[str, dict[str, Any]]:
    """What a start needs of the ledger: its open runs (the compacted topic, whole) and the
    dedupe window of its settled ones, so start-up time does not grow with history. Batches
    of succeeded runs an older worker wrote to the compacted topic are tombstoned once past
    retention, as the retained topic would have dropped them."""
    topic, now = runs_topic(settings.namespace), time.time()
    open_runs, stale = await fold_topic(
        transport, topic, stale_before=int((now - settings.ledger_retention_s) * 1000))
    done, _ = await fold_topic(transport, done_of(topic),
                               since_ms=int((now - settings.dedupe_window_s) * 1000))
    if stale:
        await transport.publish(stale)
        log.info("run ledger: %d batches of succeeded runs older than ledger_retention_s "
                 "(%gs) left the compacted topic", len(stale), settings.ledger_retention_s)
    metrics.ledger_loaded.update({"open": len(open_runs), "done": len(done)})
    log.info("run ledger: read %d open runs and %d settled runs of the last %gs at start",
             len(open_runs), len(done), settings.dedupe_window_s)
    return merge(open_runs, done)
