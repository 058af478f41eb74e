"""The ``AllOf`` and ``AnyOf`` runtime: the barrier machine's partition states, kept in the
changelog topic ``<namespace>.state.<stage>`` so they move with their partition."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from functools import partial
from typing import Any

import orjson
from pydantic import BaseModel

from streamflow.model import (
    H_BACKFILL,
    H_MODE,
    H_PARTITION,
    H_TRACEPARENT,
    AllOf,
    AnyOf,
    Arrival,
    Asset,
    DeadlinePolicy,
    Inputs,
    Message,
    Mode,
    OutMessage,
    PlannedRun,
    RunInput,
    StageSpec,
    stable_id,
    state_topic,
)
from streamflow.state import StateStore
from streamflow.transports import Transport

from ._protocol import never_held
from ._state import Barrier, Fire, PartitionState, Slot

log = logging.getLogger("streamflow.barrier")


class BarrierGate:
    def __init__(self, spec: StageSpec, transport: Transport, namespace: str,
                 by_asset: dict[str, Asset[Any]]) -> None:
        assert isinstance(spec.trigger, AllOf | AnyOf)
        self.spec, self.by_asset = spec, by_asset
        self.barrier = Barrier(spec.name, [a.name for a in spec.inputs], spec.trigger)
        self.store: StateStore[PartitionState] = StateStore(
            transport, state_topic(namespace, spec.name), spec.name, PartitionState.from_json)
        self.held: Callable[[str, str], bool] = never_held
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

    def offer(self, m: Message, arr: Arrival, asset: Asset[Any], record: BaseModel | None = None
              ) -> tuple[list[PlannedRun], list[OutMessage]]:
        state = self.states.get(arr.partition)
        if state is None:
            state = PartitionState(arr.partition, m.partition, int(time.time() * 1000))
            self.states[arr.partition] = state
        before = state.slots.get(asset.name)
        key = m.key.decode("utf-8", "replace") if m.key is not None else None
        fire = self.barrier.offer(
            state, asset.name,
            Slot(arr.arrival_id, arr.version, m.value, list(m.headers), key, record),
            refire=self.held(arr.partition, "*"))
        after = state.slots.get(asset.name)
        changed = before is None or after is None or before.arrival_id != after.arrival_id
        msgs = [self.store.message(state.partition, state)] if changed else []
        return ([self.plan(fire)] if fire is not None else []), msgs

    def plan(self, fire: Fire, replay: int = 0, run_id: str | None = None) -> PlannedRun:
        records: dict[str, Any] = {}
        inputs: list[RunInput] = []
        parents: dict[str, bytes] = {}
        mode: Mode = "live"
        backfill = ""
        partition = ""
        for name, slot in sorted(fire.slots.items()):
            asset = self.by_asset[name]
            # The arrival that completed the barrier was validated a moment ago.
            records[name] = slot.record if slot.record is not None else \
                asset.contract.model_validate_json(slot.value)
            slot.record = None  # kept only until the run: an open barrier holds bytes
            headers = dict(slot.headers)
            partition = headers.get(H_PARTITION, b"default").decode("utf-8", "replace")
            inputs.append(RunInput(name, partition, slot.version, slot.arrival_id))
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
        return PlannedRun(run_id or fire.run_id, partition, Inputs(partition, records), inputs,
                          parent, links, mode, replay, planned=True, backfill=backfill,
                          payload_of=partial(_payload, fire, partition))

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

    def expired(self) -> list[tuple[PlannedRun, DeadlinePolicy, OutMessage]]:
        trigger = self.barrier.trigger
        if not isinstance(trigger, AllOf) or trigger.deadline_s is None:
            return []
        now = int(time.time() * 1000)
        due: list[tuple[PlannedRun, DeadlinePolicy, OutMessage]] = []
        for state in self.states.values():
            if self.barrier.expired(state, now):
                fire = self.barrier.on_deadline(state)
                due.append((self.plan(fire), trigger.on_deadline,
                            self.store.message(state.partition, state)))
        return due

    def any_expired(self) -> bool:
        trigger = self.barrier.trigger
        if not isinstance(trigger, AllOf) or trigger.deadline_s is None:
            return False  # nothing can expire: no scan (every poll asks)
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


def _payload(fire: Fire, partition: str) -> bytes:
    """A planned run's inputs, as its retry or dead letter carries them (``replan`` reads)."""
    return orjson.dumps({"run_id": fire.run_id, "partition": partition,
                         "slots": {a: s.to_json() for a, s in fire.slots.items()}})
