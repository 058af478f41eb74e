"""The ``AllOf`` and ``AnyOf`` runtime: the barrier machine's partition states, kept in the
changelog topic ``<namespace>.state.<stage>`` so they move with their partition."""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime
from functools import partial
from typing import Any

import orjson
from pydantic import BaseModel

from streamflow.model import (
    H_BACKFILL,
    H_EVENT_TIME,
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
    header_int,
    stable_id,
    state_topic,
)
from streamflow.transports import Transport

from ._protocol import Late, Refused, never_held
from ._state import Barrier, Fire, PartitionState, Slot
from ._store import DueHeap, PartitionBook, TriggerStore

H_MODE_BACKFILL = (H_MODE, b"backfill")
RETIRE_BATCH = 1000
"""Most fired partitions one arrival retires (their tombstones ride in its publish)."""


class BarrierGate:
    def __init__(self, spec: StageSpec, transport: Transport, namespace: str,
                 by_asset: dict[str, Asset[Any]]) -> None:
        assert isinstance(spec.trigger, AllOf | AnyOf)
        self.spec, self.by_asset = spec, by_asset
        self.barrier = Barrier(spec.name, [a.name for a in spec.inputs], spec.trigger)
        ret = spec.trigger.retention_s
        self._retention_ms = None if ret is None else int(ret * 1000)
        self._deadline_ms = (int(spec.trigger.deadline_s * 1000) if isinstance(
            spec.trigger, AllOf) and spec.trigger.deadline_s is not None else None)
        self.store = TriggerStore(transport, state_topic(namespace, spec.name), spec.name,
                                  self._settled)
        self._deadlines = DueHeap()  # open partitions by wall-clock deadline
        self._waiting: set[str] = set()  # past the deadline, a required input still missing
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

    def _settled(self, partition: int, book: PartitionBook) -> None:
        """A partition was restored: input watermarks, retirements and deadlines resume."""
        for key, state in self.states.items():
            if state.kafka_partition != partition:
                continue
            for name, slot in state.slots.items():
                if H_MODE_BACKFILL not in slot.headers:
                    book.wms[name] = max(book.wms.get(name, 0), _event_ms(slot))
            if state.fired is not None:
                self._schedule(book, key, state)
            elif self._deadline_ms is not None:
                self._deadlines.push(state.first_seen_ms + self._deadline_ms, key)

    def _schedule(self, book: PartitionBook, key: str, state: PartitionState,
                  only: str | None = None) -> None:
        """A fired partition retires once every input's watermark is past its slot: each slot
        is looked at when its input's watermark passes it, and the last one retires it. A new
        version of a fired partition reschedules ``only`` its own slot (the others' entries
        stand, or their slots are passed already)."""
        if self._retention_ms is None:
            return
        for name, slot in state.slots.items():
            if only is None or name == only:
                book.retire.setdefault(name, DueHeap()).push(
                    _event_ms(slot) + self._retention_ms, key)

    def offer(self, m: Message, arr: Arrival, asset: Asset[Any], record: BaseModel | None = None
              ) -> tuple[list[PlannedRun], list[OutMessage]]:
        book = self.store.book(m.partition)
        if book.redelivered(m.topic, m.offset):
            return [], []  # its effect is in the changelog (its partition may be retired)
        book.pos[m.topic] = m.offset
        state = self.states.get(arr.partition)
        # Event time drives retention on live arrivals that carry one (a backfill's is old
        # by design; an arrival from before the header existed has none).
        live = arr.mode == "live" and arr.event_time_ms > 0
        if state is None:
            ret, wm = self._retention_ms, book.wms.get(asset.name, 0)
            if live and ret is not None and arr.event_time_ms + ret <= wm:
                raise Late(
                    f"late: event time {_iso(arr.event_time_ms)} of {asset.name!r} for "
                    f"partition {arr.partition!r} is older than the barrier's retention "
                    f"({ret / 1000:g}s) behind the input's watermark {_iso(wm)}; a partition "
                    "that old has been forgotten (raise retention_s to keep more)")
            state = PartitionState(arr.partition, m.partition, int(time.time() * 1000))
            self.states[arr.partition] = state
            if self._deadline_ms is not None:
                self._deadlines.push(state.first_seen_ms + self._deadline_ms, arr.partition)
        before, was_fired = state.slots.get(asset.name), state.fired is not None
        key = m.key.decode("utf-8", "replace") if m.key is not None else None
        fire = self.barrier.offer(
            state, asset.name,
            Slot(arr.arrival_id, arr.version, m.value, list(m.headers), key, record),
            refire=self.held(arr.partition, "*"))
        after = state.slots.get(asset.name)
        changed = before is None or after is None or before.arrival_id != after.arrival_id
        if arr.partition in self._waiting and self._ready(state) and self._deadline_ms:
            self._waiting.discard(arr.partition)  # past its deadline: due now
            self._deadlines.push(state.first_seen_ms + self._deadline_ms, arr.partition)
        msgs = [self.store.message(state.partition, state)] if changed else []
        if changed and state.fired is not None:  # fired, or a new version of a fired one
            self._schedule(book, arr.partition, state, asset.name if was_fired else None)
        if live and arr.event_time_ms > book.wms.get(asset.name, 0):
            book.wms[asset.name] = arr.event_time_ms
            self._retire(book, asset.name, m.partition, msgs)
        return ([self.plan(fire)] if fire is not None else []), msgs

    def _retire(self, book: PartitionBook, name: str, partition: int,
                msgs: list[OutMessage]) -> None:
        """Fired partitions every input's watermark has left behind are tombstoned, with a
        mark that keeps the watermarks (an arrival that old is late)."""
        heap, ret = book.retire.get(name), self._retention_ms
        if heap is None or ret is None:
            return
        retired, held = 0, []
        for key in heap.due(book.wms[name]):
            state = self.states.get(key)
            if state is None or state.fired is None or state.kafka_partition != partition:
                continue
            if self.held(key, "*"):  # looked at again when the watermark next moves
                held.append(key)
            elif all(_event_ms(s) + ret <= book.wms.get(a, 0) for a, s in state.slots.items()):
                msgs.extend(self.store.retire(key, state, slots=False))
                retired += 1
                if retired >= RETIRE_BATCH:  # the rest next time: one publish stays small
                    break
        for key in held:
            heap.push(book.wms[name], key)
        if retired:
            msgs.append(self.store.mark(partition))

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
            # Kept only until the run (the changelog message of the arrival that fired it
            # is made): a fired state held for its retention keeps bytes only.
            slot.record = slot.encoded = None
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

    def replan(self, payload: bytes, arr: Arrival) -> PlannedRun:
        """A retried or replayed run: everything it needs travels in its payload."""
        try:
            d = orjson.loads(payload)
            slots = {a: Slot.from_json(s) for a, s in d["slots"].items()}
            fire = Fire(str(d["run_id"]), slots, None)
            run_id = fire.run_id if not arr.replay else stable_id(
                fire.run_id, f"replay-{arr.replay}")
            return self.plan(fire, arr.replay, run_id)
        except (ValueError, KeyError, TypeError) as e:
            raise Refused(f"unreadable planned run: {type(e).__name__}: {e}") from None

    def _ready(self, state: PartitionState) -> bool:
        t = self.barrier.trigger
        return isinstance(t, AllOf) and all(r in state.slots for r in t.required)

    def _head(self) -> int | None:
        """The earliest pending deadline (ms); stale entries are dropped, and a partition
        still missing a required input waits aside until it arrives."""
        now = time.time() * 1000
        while (head := self._deadlines.head()) is not None:
            state = self.states.get(head[1])
            if state is not None and state.fired is None:
                if head[0] > now or self._ready(state):
                    return head[0]
                self._waiting.add(head[1])  # past due, a required input missing
            self._deadlines.pop()
        return None

    def expired(self) -> list[tuple[PlannedRun, DeadlinePolicy, OutMessage]]:
        trigger = self.barrier.trigger
        if not isinstance(trigger, AllOf) or self._deadline_ms is None:
            return []
        now = int(time.time() * 1000)
        due: list[tuple[PlannedRun, DeadlinePolicy, OutMessage]] = []
        while (head := self._head()) is not None and head <= now:
            state = self.states[self._deadlines.pop()]
            fire = self.barrier.on_deadline(state)
            book = self.store.book(state.kafka_partition)
            self._schedule(book, state.partition, state)
            due.append((self.plan(fire), trigger.on_deadline,
                        self.store.message(state.partition, state)))
        return due

    def any_expired(self) -> bool:
        if self._deadline_ms is None:
            return False  # nothing can expire: no heap (every poll asks)
        head = self._head()
        return head is not None and head <= time.time() * 1000

    def next_deadline_s(self) -> float | None:
        """Seconds until the earliest open barrier's deadline (None: no deadline pending)."""
        head = None if self._deadline_ms is None else self._head()
        return None if head is None else (head - time.time() * 1000) / 1000

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


def _event_ms(slot: Slot) -> int:
    return header_int(dict(slot.headers).get(H_EVENT_TIME), 0)


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat()


def _payload(fire: Fire, partition: str) -> bytes:
    """A planned run's inputs, as its retry or dead letter carries them (``replan`` reads)."""
    return orjson.dumps({"run_id": fire.run_id, "partition": partition,
                         "slots": {a: s.to_json() for a, s in fire.slots.items()}})
