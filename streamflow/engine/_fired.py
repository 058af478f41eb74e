"""A stage's fired runs: run ids that reached a final status, so a redelivered or duplicated
input skips its run.

The set is shared by the stage's two lanes. At start the worker reads the whole ledger; a
partition that moves here later brings what its previous owner ran (read from that ledger
partition before its first record is handled). Exactly once, a run fired in a transaction that
has not committed is forgotten if the transaction may be lost.
"""

from __future__ import annotations

import asyncio
import logging

from streamflow.state import fired_of, fold_raw
from streamflow.transports import Transport

log = logging.getLogger("streamflow.stage")


class FiredRuns:
    def __init__(self, fired: set[str], transport: Transport, runs_topic: str,
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
            self.ids.difference_update(self._uncommitted.pop(p, ()))

    def rewound(self) -> None:
        self.unfire()
        self._fresh = set()

    async def _load(self, partitions: set[int]) -> None:
        msgs = await self.transport.read_topic(self.runs_topic, partitions)
        self.ids.update(fired_of(fold_raw(msgs), self.stage))

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
