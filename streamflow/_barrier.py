"""The engine side of multi-input triggers: partition state in a changelog topic.

Each barrier stage keeps, per partition key, the latest arrival of each input. Every change is
written to the compacted topic ``<namespace>.state.<stage>``, on the same partition number as
the input that caused it, in the same publish as the run's outputs and before the input offset
is committed. Because inputs are co-partitioned by partition key and consumed with the range
assignor, a worker that is assigned input partition *n* reads changelog partition *n* first and
knows every open barrier and fired run there: the state moves with its partition. The local
dictionary is a view; the changelog is the truth (on the embedded transport it is a table of the
same log).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Generic, Protocol, TypeVar

import orjson

from ._ledger import RunInput
from ._model import H_BACKFILL, H_MODE, H_TRACEPARENT, Arrival, Asset, stable_id
from ._triggers import AllOf, AnyOf, Barrier, Fire, Inputs, PartitionState, Slot
from .transports import Message, OutMessage

if TYPE_CHECKING:
    from ._pipeline import StageSpec
    from ._runners import Ctx
    from ._stage import PlannedRun

log = logging.getLogger("streamflow.barrier")


def _never(_partition: str, _key: str) -> bool:
    return False


def state_topic(namespace: str, stage: str) -> str:
    return f"{namespace}.state.{stage}"


class Keyed(Protocol):
    """What a changelog holds: JSON-able state that lives on one input partition number."""

    kafka_partition: int

    def to_json(self) -> dict[str, Any]: ...


S = TypeVar("S", bound=Keyed)


class StateStore(Generic[S]):
    """States of one stage: a local view of a changelog topic (barriers, windows, holds)."""

    def __init__(self, ctx: Ctx, stage: str, decode: Callable[[dict[str, Any]], S],
                 topic: str | None = None) -> None:
        self.ctx, self.stage, self.decode = ctx, stage, decode
        self.topic = topic or state_topic(ctx.namespace, stage)
        self.states: dict[str, S] = {}
        self._restores: dict[int, asyncio.Future[None]] = {}

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
        return task is not None and task.done()

    def restoring(self) -> bool:
        return any(not t.done() for t in self._restores.values())

    async def _load(self, partition: int) -> None:
        t0 = time.perf_counter()
        n = 0
        msgs = await self.ctx.transport.read_topic(self.topic, {partition})
        if self._restores.get(partition) is not asyncio.current_task():
            return  # revoked (forgotten) while loading: the state belongs to its new owner
        for m in msgs:
            key = (m.key or b"").decode()
            if not m.value:
                self.states.pop(key, None)
                continue
            self.states[key] = self.decode(orjson.loads(m.value))
            n += 1
        log.info("stage %s: restored %d state records of partition %d in %.3fs",
                 self.stage, n, partition, time.perf_counter() - t0)

    async def forget(self, partitions: set[int]) -> None:
        """Partitions were taken away: their state now belongs to another worker."""
        for key in [k for k, s in self.states.items() if s.kafka_partition in partitions]:
            del self.states[key]
        for p in partitions:
            self._restores.pop(p, None)

    def message(self, key: str, state: S) -> OutMessage:
        return OutMessage(self.topic, orjson.dumps(state.to_json()), key.encode(), [],
                          partition=state.kafka_partition)

    def tombstone(self, key: str, kafka_partition: int) -> OutMessage:
        """The key's state is gone (an empty value; folding drops it)."""
        return OutMessage(self.topic, b"", key.encode(), [], partition=kafka_partition)


class Late(Exception):
    """An arrival for a window that has already closed."""


class BarrierGate:
    def __init__(self, spec: StageSpec, ctx: Ctx, by_asset: dict[str, Asset[Any]]) -> None:
        assert isinstance(spec.trigger, AllOf | AnyOf)
        self.spec, self.ctx, self.by_asset = spec, ctx, by_asset
        self.barrier = Barrier(spec.name, [a.name for a in spec.inputs], spec.trigger)
        self.store = StateStore(ctx, spec.name, PartitionState.from_json)
        self.held: Callable[[str, str], bool] = _never
        """Whether a gate holds this barrier's run for a partition key: then a new version
        re-fires it, whatever ``on_new_version`` says."""

    @property
    def states(self) -> dict[str, PartitionState]:
        return self.store.states

    async def restore(self, partitions: set[int]) -> None:
        await self.store.restore(partitions)

    async def forget(self, partitions: set[int]) -> None:
        await self.store.forget(partitions)

    async def ensure_restored(self, partition: int) -> None:
        await self.store.ensure_restored(partition)

    def offer(self, m: Message, arr: Arrival, asset: Asset[Any]
              ) -> tuple[list[PlannedRun], list[OutMessage]]:
        state = self.states.get(arr.partition)
        if state is None:
            state = PartitionState(arr.partition, m.partition, int(time.time() * 1000))
            self.states[arr.partition] = state
        before = state.slots.get(asset.name)
        key = m.key.decode("utf-8", "replace") if m.key is not None else None
        fire = self.barrier.offer(
            state, asset.name, Slot(arr.arrival_id, arr.version, m.value, list(m.headers), key),
            refire=self.held(arr.partition, "*"))
        after = state.slots.get(asset.name)
        changed = before is None or after is None or before.arrival_id != after.arrival_id
        msgs = [self.store.message(state.partition, state)] if changed else []
        return ([self.plan(fire)] if fire is not None else []), msgs

    def plan(self, fire: Fire, replay: int = 0, run_id: str | None = None) -> PlannedRun:
        from ._stage import PlannedRun

        records: dict[str, Any] = {}
        inputs: list[RunInput] = []
        parents: dict[str, bytes] = {}
        mode = "live"
        backfill = ""
        partition = ""
        for name, slot in sorted(fire.slots.items()):
            asset = self.by_asset[name]
            records[name] = asset.contract.model_validate_json(slot.value)
            arr = Arrival.from_message(None, slot.value, slot.headers)
            partition = arr.partition
            inputs.append(RunInput(asset=name, partition=arr.partition, version=arr.version,
                                   arrival_id=slot.arrival_id))
            headers = dict(slot.headers)
            tp = headers.get(H_TRACEPARENT)
            if tp is not None:
                parents[name] = tp
            if headers.get(H_MODE) == b"backfill":
                mode = "backfill"
                backfill = headers.get(H_BACKFILL, b"").decode("utf-8", "replace") or backfill
        # One input: its context is the parent. Several: the run is a child of the input that
        # completed the barrier and links to every other input.
        parent = parents.get(fire.completing or "") if fire.completing else None
        links = [tp for name, tp in parents.items() if name != fire.completing]
        payload = orjson.dumps({"run_id": fire.run_id, "partition": partition,
                                "slots": {a: s.to_json() for a, s in fire.slots.items()}})
        return PlannedRun(run_id or fire.run_id, partition, Inputs(partition, records), inputs,
                          parent, links, mode, replay, payload, planned=True, backfill=backfill)

    def replan(self, payload: bytes, arr: Arrival) -> PlannedRun | None:
        """A retried or replayed run: everything it needs travels in its payload."""
        try:
            d = orjson.loads(payload)
            slots = {a: Slot.from_json(s) for a, s in d["slots"].items()}
            fire = Fire(str(d["run_id"]), slots, None)
            run_id = fire.run_id if not arr.replay else stable_id(
                fire.run_id, f"replay-{arr.replay}")
            return self.plan(fire, arr.replay, run_id)
        except (ValueError, KeyError, TypeError) as e:
            log.error("stage %s: unreadable planned run dropped: %s", self.spec.name, e)
            return None

    def expired(self) -> list[tuple[PlannedRun, str, OutMessage]]:
        trigger = self.barrier.trigger
        if not isinstance(trigger, AllOf) or trigger.deadline_s is None:
            return []
        now = int(time.time() * 1000)
        due: list[tuple[PlannedRun, str, OutMessage]] = []
        for state in self.states.values():
            if self.barrier.expired(state, now):
                fire = self.barrier.on_deadline(state)
                due.append((self.plan(fire), trigger.on_deadline,
                            self.store.message(state.partition, state)))
        return due

    def any_expired(self) -> bool:
        now = int(time.time() * 1000)
        return any(self.barrier.expired(s, now) for s in self.states.values())

    def next_deadline_s(self) -> float | None:
        """Seconds until the earliest open barrier's deadline (None: no deadline pending)."""
        trigger = self.barrier.trigger
        if not isinstance(trigger, AllOf) or trigger.deadline_s is None:
            return None
        firsts = [s.first_seen_ms for s in self.states.values() if s.fired is None and s.slots
                  and all(r in s.slots for r in trigger.required)]
        if not firsts:
            return None
        return (min(firsts) + trigger.deadline_s * 1000 - time.time() * 1000) / 1000

    def missing(self, plan: PlannedRun) -> list[str]:
        assert isinstance(plan.arg, Inputs)
        return plan.arg.missing(self.barrier.inputs)

    def deadline_reason(self, plan: PlannedRun) -> str:
        return (f"barrier for partition {plan.partition!r} missed its deadline; missing inputs: "
                f"{', '.join(self.missing(plan))}")

    def alert_text(self, plan: PlannedRun, what: str) -> str:
        return (f"barrier for partition {plan.partition!r} {what} at its deadline; arrived: "
                f"{', '.join(sorted(i.asset for i in plan.inputs)) or 'nothing'}; missing: "
                f"{', '.join(self.missing(plan))}")
