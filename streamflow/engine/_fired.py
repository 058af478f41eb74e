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

from streamflow.state import SETTLED, fired_of, read_ledger
from streamflow.transports import Transport

log = logging.getLogger("streamflow.stage")


class RecentRuns:
    """Run ids fired lately, in two generations of a set each, so memory stays bounded.

    The current generation takes every new id; it becomes the previous one (and the previous
    one is dropped whole) once it has run for ``window_s`` or holds ``max_ids`` ids. An id is
    so remembered for the window or for the next ``max_ids`` ids, whichever ends first, at a
    set lookup or two. An input redelivered after that runs again (keyed sinks absorb it).
    """

    __slots__ = ("_clock", "_since", "current", "max_ids", "open", "previous", "window_s")

    def __init__(self, window_s: float, max_ids: int,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.window_s, self.max_ids, self._clock = window_s, max_ids, clock
        self.current: set[str] = set()
        self.previous: set[str] = set()
        self._since = clock()
        self.open: dict[str, int] = {}
        """Runs with an open record on the ledger's compacted topic (retrying, dead-lettered,
        held, parked), by its partition: the run's settled record tombstones it there. As
        many as the stage's unresolved runs."""

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

    def opened(self, run_id: str, kafka_partition: int) -> None:
        """An open record was written for the run (-1: placed by its run id)."""
        self.ids.open[run_id] = kafka_partition

    def settle_at(self, run_id: str) -> int | None:
        """Where the run's open record is, if it has one; it is forgotten."""
        return self.ids.open.pop(run_id, None)

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
        where: dict[str, int] = {}
        ledger = await read_ledger(self.transport, self.runs_topic, partitions, since, where,
                                   brief=True)
        self.ids.update(fired_of(ledger, self.stage, since, self.ids.max_ids))
        self.ids.open.update({r: p for r, p in where.items() if ledger[r]["stage"] == self.stage
                              and ledger[r]["status"] not in SETTLED})

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

