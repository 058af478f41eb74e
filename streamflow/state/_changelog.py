"""Changelog-backed state: a local view of a compacted topic, one key per state, loaded per
partition when the partition is assigned.

Every change is written on the same partition number as the input that caused it, in the same
publish as the run's outputs and before the input offset is committed. Because inputs are
co-partitioned by partition key and consumed with the range assignor, a worker that is assigned
input partition *n* reads changelog partition *n* first: the state moves with its partition.
The local dictionary is a view; the changelog is the truth (on the embedded transport it is a
table of the same log). Barriers, windows and gate holds all keep their state here.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Collection
from typing import Any, Generic, Protocol, TypeVar

import orjson

from streamflow.model import Message, OutMessage
from streamflow.transports import Transport

from ._checkpoint import Checkpoints, Snapshot

log = logging.getLogger("streamflow.state")

STATE_VERSION = 1
"""The changelog format: each state's JSON carries it as ``"v"`` (absent: written before the
field existed, the same format). A newer one is skipped with a warning, never misread."""


class Keyed(Protocol):
    """What a changelog holds: JSON-able state that lives on one input partition number."""

    kafka_partition: int

    def to_json(self) -> dict[str, Any]: ...


S = TypeVar("S", bound=Keyed)


class StateStore(Generic[S]):
    """States of one stage: a local view of a changelog topic (barriers, windows, holds).

    A store with records of more than one kind (a window's slots, a trigger's marks) folds
    them itself: it overrides ``apply``, ``drop`` and ``settle``."""

    version = STATE_VERSION
    """The format this store writes (``"v"``); ``readable`` are those it folds."""
    readable: frozenset[int] = frozenset({STATE_VERSION})

    def __init__(self, transport: Transport, topic: str, stage: str,
                 decode: Callable[[dict[str, Any]], S]) -> None:
        self.transport, self.topic, self.stage, self.decode = transport, topic, stage, decode
        self.states: dict[str, S] = {}
        self._restores: dict[int, asyncio.Future[None]] = {}
        self.unsure: set[int] = set()
        """Partitions whose view may differ from their changelog (work decided in memory but
        not published: a deadline met outside its partition's transaction); never
        checkpointed, until restored again."""
        self.unreadable: set[int] = set()
        """Partitions with records of a newer format, skipped: a checkpoint would lose them."""
        self.checkpoints: Checkpoints | None = None
        """Where this store's partitions are checkpointed (None: restores read from the start).
        Set only on stores with one writer per partition: a checkpoint must hold nothing
        another loop might still fail to publish."""

    async def restore(self, partitions: set[int]) -> None:
        """Partitions were assigned to us: load their states from the changelog."""
        self.prefetch(partitions)
        for p in partitions:
            await self.ensure_restored(p)

    def prefetch(self, partitions: set[int]) -> None:
        """Start loading these partitions without waiting: a rebalance callback must return
        quickly, because aiokafka sends no heartbeat until it has (a callback longer than the
        session timeout gets the member dropped, and its rejoin rebalances everyone again).
        Every offer awaits ``ensure_restored`` first, so no input meets a partial state."""
        for p in partitions:
            self._task(p)

    def _task(self, partition: int) -> asyncio.Future[None]:
        task = self._restores.get(partition)
        if task is None or (task.done() and not task.cancelled()
                            and task.exception() is not None):  # failed (broker gone): again
            task = asyncio.ensure_future(self._load(partition))
            self._restores[partition] = task
        return task

    async def ensure_restored(self, partition: int) -> None:
        """Load changelog partition ``partition`` once, before any of its inputs is offered.

        aiokafka may hand out records of a new assignment before (or while) the rebalance
        callback runs, so every offer waits here too; both share one load per partition.
        """
        while True:
            task = self._task(partition)
            await task
            if self._restores.get(partition) is task:
                return
            # Forgotten and assigned again while loading: that load kept nothing; wait for
            # the current one.

    def loaded(self, partition: int) -> bool:
        """Restored already: the hot path skips awaiting ``ensure_restored``."""
        task = self._restores.get(partition)
        return (task is not None and task.done() and not task.cancelled()
                and task.exception() is None)

    def restoring(self) -> bool:
        return any(not t.done() for t in self._restores.values())

    async def _load(self, partition: int) -> None:
        t0 = time.perf_counter()
        n = 0
        self.unsure.discard(partition)
        snap = await self._usable_checkpoint(partition)
        for chunk in () if snap is None else snap.chunks(self.topic, partition):
            if self._restores.get(partition) is not asyncio.current_task():
                return  # revoked (forgotten) while loading: its state is its new owner's
            n += self._fold(chunk, partition)
            await asyncio.sleep(0)  # a large checkpoint must not hold up heartbeats
        start = None if snap is None else {partition: snap.offset}
        async with contextlib.aclosing(
                self.transport.scan_topic(self.topic, {partition}, from_offsets=start)) as scan:
            async for chunk in scan:
                if self._restores.get(partition) is not asyncio.current_task():
                    return
                n += self._fold(chunk, partition)
        if self._restores.get(partition) is not asyncio.current_task():
            return
        self.settle(partition)
        since = "" if snap is None else (
            f" ({len(snap.records)} from a checkpoint at offset {snap.offset})")
        log.info("stage %s: restored %d state records of partition %d%s in %.3fs",
                 self.stage, n, partition, since, time.perf_counter() - t0)

    async def _usable_checkpoint(self, partition: int) -> Snapshot | None:
        cps = self.checkpoints
        if cps is None:
            return None
        snap = await asyncio.to_thread(cps.load, self.topic, partition)
        if snap is None:
            return None
        end = (await self.transport.end_offsets(self.topic)).get(partition)
        if end is None:  # not known now: neither usable nor proven wrong
            log.info("stage %s: the end of %s partition %d is not known yet; restoring from the "
                     "start", self.stage, self.topic, partition)
            return None
        if snap.offset > end:
            log.warning("stage %s: the checkpoint of %s partition %d covers offset %d, past the "
                        "changelog's end %d (the topic was created again?); restoring from the "
                        "start and deleting it", self.stage, self.topic, partition, snap.offset,
                        end)
            await asyncio.to_thread(cps.discard, self.topic, partition)
            return None
        return snap

    async def checkpoint(self, assigned: Collection[int]) -> None:
        """Write a checkpoint of every restored partition still ``assigned`` at the changelog's
        end. Call it only once everything this store's state reflects is committed (a clean
        stop's last commit): the changelog's end then covers all of it. The end is read
        first and the view taken after it with no wait between, so a revoke meanwhile
        leaves its partition out instead of checkpointing it empty."""
        cps = self.checkpoints
        if cps is None:
            return
        t0 = time.perf_counter()
        ends = await self.transport.end_offsets(self.topic)
        parts = {p for p in self._restores if self.loaded(p) and p in assigned and p in ends
                 and p not in self.unsure and p not in self.unreadable}
        # The view is taken now; encoding it (seconds for 100,000 states) runs in a thread so
        # the loop keeps the group's heartbeats going. Nothing changes a state meanwhile (the
        # stage has stopped); a revoke only drops states, so its partitions are left out.
        view = [(k, st) for k, st in self.states.items() if st.kafka_partition in parts]
        marks = {p: self.partition_records(p) for p in parts}
        snaps = await asyncio.to_thread(self._encode, view, marks)
        parts = {p for p in parts if self.loaded(p) and p not in self.unsure}
        for p in sorted(parts):
            records = snaps.get(p, [])
            size = await asyncio.to_thread(cps.save, self.topic, p, ends[p], records)
            log.info("stage %s: checkpointed %d state records (%d bytes) of %s partition %d at "
                     "offset %d", self.stage, len(records), size, self.topic, p, ends[p])
        for p in self.unsure | self.unreadable:  # an older checkpoint of it is wrong now too
            await asyncio.to_thread(cps.discard, self.topic, p)
        log.debug("stage %s: checkpoints took %.3fs", self.stage, time.perf_counter() - t0)

    def _encode(self, view: list[tuple[str, S]], marks: dict[int, list[OutMessage]]
                ) -> dict[int, list[tuple[bytes, bytes]]]:
        """The changelog records whose fold is this view (``marks``: each partition's own)."""
        out: dict[int, list[tuple[bytes, bytes]]] = {p: [] for p in marks}
        for key, state in view:
            out[state.kafka_partition].extend(
                (m.key or b"", m.value) for m in self.records_of(key, state))
        for p, records in out.items():
            records.extend((m.key or b"", m.value) for m in marks[p])
        return out

    def records_of(self, key: str, state: S) -> list[OutMessage]:
        """The latest record(s) of ``key``: what a fold needs to rebuild it."""
        return [self.message(key, state)]

    def partition_records(self, partition: int) -> list[OutMessage]:
        """Records of a partition besides its states' (a trigger's mark)."""
        return []

    def _fold(self, msgs: list[Message], partition: int) -> int:
        """One chunk of a partition's restore; returns the records applied."""
        n = 0
        for m in msgs:
            key = (m.key or b"").decode()
            if not m.value:
                self.drop(key, partition)
                continue
            d = orjson.loads(m.value)
            v = d.pop("v", 1)
            if v not in self.readable:
                self.unreadable.add(partition)
                log.warning("stage %s: state %r on %s is of format v%s, not this worker's v%d; "
                            "skipped (upgrade StreamFlow to read it)", self.stage, key,
                            self.topic, v, self.version)
                continue
            self.apply(key, d, v, partition)
            n += 1
        return n

    def apply(self, key: str, d: dict[str, Any], version: int, partition: int) -> None:
        """Fold one restored record (its ``"v"`` removed) into the view."""
        self.states[key] = self.decode(d)

    def drop(self, key: str, partition: int) -> None:
        """Fold one restored tombstone."""
        self.states.pop(key, None)

    def settle(self, partition: int) -> None:
        """Every record of ``partition`` is folded."""

    async def forget_all(self) -> None:
        """Every partition's state is discarded (the open transaction that held it was)."""
        await self.forget(set(self._restores))

    async def forget(self, partitions: set[int]) -> None:
        """Partitions were taken away: their state now belongs to another worker."""
        for key in [k for k, s in self.states.items() if s.kafka_partition in partitions]:
            del self.states[key]
        for p in partitions:
            self._restores.pop(p, None)

    def message(self, key: str, state: S) -> OutMessage:
        d = state.to_json()
        d["v"] = self.version
        return OutMessage(self.topic, orjson.dumps(d), key.encode(), [],
                          partition=state.kafka_partition)

    def tombstone(self, key: str, kafka_partition: int) -> OutMessage:
        """The key's state is gone (an empty value; folding drops it)."""
        return OutMessage(self.topic, b"", key.encode(), [], partition=kafka_partition)

