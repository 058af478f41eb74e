"""The engine side of event-time windows: records gathered per window in the changelog.

Each window (partition key x window start) is a header record in ``<namespace>.state.<stage>``
and each of its records one more, appended as it arrives (one per asset and record key unless
``keep="all"``). The watermark of an input partition is the highest event time seen on it;
when it passes a window's close (from a heap, not a scan) the window fires, and once no gate
holds it, it is tombstoned with a mark that keeps the watermark: a record for it is then late.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import orjson
from pydantic import BaseModel

from streamflow.model import (
    H_ASSET,
    H_BACKFILL,
    H_EVENT_TIME,
    H_MODE,
    H_TRACEPARENT,
    Arrival,
    Asset,
    DeadlinePolicy,
    Message,
    Mode,
    OutMessage,
    PlannedRun,
    RunInput,
    StageSpec,
    Window,
    WindowRecords,
    header_int,
    stable_id,
    state_topic,
)
from streamflow.transports import Transport

from ._protocol import Full, Late, Refused, never_held
from ._state import PartitionState, Slot
from ._store import DueHeap, PartitionBook, TriggerStore

log = logging.getLogger("streamflow.window")
MAX_LINKS = 32


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat()


class WindowGate:
    def __init__(self, spec: StageSpec, transport: Transport, namespace: str,
                 by_asset: dict[str, Asset[Any]]) -> None:
        assert isinstance(spec.trigger, Window)
        self.spec, self.by_asset = spec, by_asset
        self.window: Window = spec.trigger
        self.store = TriggerStore(transport, state_topic(namespace, spec.name), spec.name,
                                  self._settled)
        self._deadlines = DueHeap()  # open windows by wall-clock deadline
        self.held: Callable[[str, str], bool] = never_held
        """Whether a gate holds a window (partition key, ``window:<start ms>``): that window
        then takes new versions; every other fired window stays closed."""

    async def restore(self, partitions: set[int]) -> None:
        await self.store.restore(partitions)

    async def forget(self, partitions: set[int]) -> None:
        await self.store.forget(partitions)

    async def ensure_restored(self, partition: int) -> None:
        await self.store.ensure_restored(partition)

    def _settled(self, partition: int, book: PartitionBook) -> None:
        """A partition was restored: its windows' closes and deadlines are scheduled, and v1
        windows get their records keyed as this version keys them."""
        w, d = self.window, self.window.deadline_s
        for key, state in self.store.states.items():
            if state.kafka_partition != partition or state.window_start_ms is None:
                continue
            if key in self.store.legacy:
                state.slots = {self._slot_key(s.arrival_id, dict(s.headers).get(H_ASSET), s.key):
                               s for s in state.slots.values()}
            # A header is written as its window opens: its records tell the event times.
            state.max_event_ms = max([state.max_event_ms, *(
                header_int(dict(s.headers).get(H_EVENT_TIME), 0) for s in state.slots.values())])
            book.wm = max(book.wm, state.max_event_ms)
            book.closing.push(w.closes_at(state.window_start_ms), key)
            if d is not None and state.fired is None:
                self._deadlines.push(state.first_seen_ms + int(d * 1000), key)

    def _slot_key(self, arrival_id: str, asset: bytes | str | None, rkey: str | None) -> str:
        if rkey is None or self.window.keep == "all":
            return arrival_id
        name = asset.decode() if isinstance(asset, bytes) else asset
        return f"{name}/{rkey}"

    def watermark(self, partition: int) -> int:
        return self.store.book(partition).wm

    def offer(self, m: Message, arr: Arrival, asset: Asset[Any], record: BaseModel | None = None
              ) -> tuple[list[PlannedRun], list[OutMessage]]:
        w, store = self.window, self.store
        book = store.book(m.partition)
        if book.redelivered(m.topic, m.offset):
            return [], []  # its effect is in the changelog (its window may be gone)
        book.pos[m.topic] = m.offset
        start = w.start_of(arr.event_time_ms)
        key = f"{arr.partition}@{start}"
        state = store.states.get(key)
        # A window a gate holds takes new versions: a corrected record replaces its
        # predecessor (same record key) and the window fires again, which may release it.
        held = (state is not None and state.fired is not None
                and self.held(arr.partition, f"window:{start}"))
        rkey = m.key.decode("utf-8", "replace") if m.key is not None else None
        skey = self._slot_key(arr.arrival_id, asset.name, rkey)
        old = state.slots.get(skey) if state is not None else None
        if old is not None and (old.arrival_id == arr.arrival_id or old.value == m.value):
            return [], []  # a redelivery, or the same record again: nothing new
        if not held and ((state is not None and state.fired is not None)
                         or book.wm >= w.closes_at(start)):
            raise Late(
                f"late: event time {_iso(arr.event_time_ms)} of partition {arr.partition!r} "
                f"falls in window {self._bounds(start)}, "
                f"closed at watermark {_iso(w.closes_at(start))} (allowed lateness "
                f"{w.allowed_lateness_s}s); the watermark is {_iso(book.wm)}")
        msgs: list[OutMessage] = []
        if state is None:
            state = self._open(key, arr, start, m.partition, book)
            msgs.append(store.header(key, state))
        if old is None and len(state.slots) >= w.max_records:
            raise Full(
                f"window {self._bounds(start)} of partition {arr.partition!r} holds "
                f"{len(state.slots)} records, its cap "
                f"(Window.max_records={w.max_records}); raise max_records, shorten size_s, "
                "or partition the input more finely")
        if held and rkey is not None and w.keep == "all":
            for k in [k for k, s in state.slots.items() if s.key == rkey]:
                msgs.append(store.drop_slot(key, k, m.partition))
                del state.slots[k]
        state.slots.pop(skey, None)  # a new version: last in arrival order
        state.slots[skey] = slot = Slot(arr.arrival_id, arr.version, m.value,
                                        list(m.headers), rkey)
        state.max_event_ms = max(state.max_event_ms, arr.event_time_ms)
        if key in store.legacy:  # its records were inline: each becomes a record of its own
            store.legacy.discard(key)
            msgs.append(store.header(key, state))
            msgs.extend(store.slot(key, k, s, m.partition) for k, s in state.slots.items())
        else:
            msgs.append(store.slot(key, skey, slot, m.partition))
        if held:
            state.fired = self._run_id(key, state)
            return [self.plan(state, state.fired, arr.traceparent)], [
                *msgs, store.header(key, state)]
        return self._advance(m.partition, book, arr, msgs)

    def _bounds(self, start: int) -> str:
        return f"[{_iso(start)}, {_iso(start + int(self.window.size_s * 1000))})"

    def _open(self, key: str, arr: Arrival, start: int, partition: int,
              book: PartitionBook) -> PartitionState:
        now = int(time.time() * 1000)
        state = self.store.states[key] = PartitionState(arr.partition, partition, now,
                                                        window_start_ms=start)
        book.closing.push(self.window.closes_at(start), key)
        if self.window.deadline_s is not None:
            self._deadlines.push(now + int(self.window.deadline_s * 1000), key)
        return state

    def _run_id(self, key: str, state: PartitionState, *extra: str) -> str:
        return stable_id(self.spec.name, key, *sorted(s.arrival_id for s in state.slots.values()),
                         *extra)

    def _advance(self, partition: int, book: PartitionBook, arr: Arrival,
                 msgs: list[OutMessage]) -> tuple[list[PlannedRun], list[OutMessage]]:
        """The watermark moves: windows it closes fire; those fired before (and no longer
        held) are retired, their tombstones published with the mark that makes them late."""
        store, changed = self.store, False
        for key in [k for k in book.retiring if not self._held(k)]:
            book.retiring.remove(key)
            state = store.states.get(key)
            if state is not None:
                msgs.extend(store.retire(key, state, slots=True))
                changed = True
        book.wm = max(book.wm, arr.event_time_ms)
        plans: list[PlannedRun] = []
        gated = self.held is not never_held  # a hold is decided after the run: retire later
        for key in book.closing.due(book.wm):
            state = store.states.get(key)
            if state is None or state.kafka_partition != partition:
                continue  # retired already, or no longer this worker's
            if state.fired is None:
                state.fired = self._run_id(key, state)
                plans.append(self.plan(state, state.fired, arr.traceparent))
                if gated:
                    msgs.append(store.header(key, state))
            if gated:
                book.retiring.append(key)
            else:
                msgs.extend(store.retire(key, state, slots=True))
            changed = True
        if changed:
            msgs.append(store.mark(partition))
        return plans, msgs

    def _held(self, key: str) -> bool:
        state = self.store.states.get(key)
        return state is not None and self.held(state.partition, f"window:{state.window_start_ms}")

    def plan(self, state: PartitionState, run_id: str, parent: bytes | None,
             replay: int = 0) -> PlannedRun:
        start = state.window_start_ms or 0
        records: dict[str, list[Any]] = {}
        inputs: list[RunInput] = []
        links: list[bytes] = []
        backfills: set[str] = set()
        for slot in state.slots.values():
            headers = dict(slot.headers)
            asset = self.by_asset[headers.get(H_ASSET, b"").decode()]
            if headers.get(H_MODE) == b"backfill":
                backfills.add(headers.get(H_BACKFILL, b"").decode("utf-8", "replace"))
            records.setdefault(asset.name, []).append(
                asset.contract.model_validate_json(slot.value))
            inputs.append(RunInput(asset=asset.name, partition=state.partition,
                                   version=slot.version, arrival_id=slot.arrival_id))
            tp = dict(slot.headers).get(H_TRACEPARENT)
            if tp is not None and tp != parent and len(links) < MAX_LINKS:
                links.append(tp)
        end = start + int(self.window.size_s * 1000)
        payload = orjson.dumps({"run_id": run_id, "state": state.to_json()})
        # As a barrier's: a run with a backfilled input is a backfill run.
        mode: Mode = "backfill" if backfills else "live"
        return PlannedRun(run_id, state.partition,
                          WindowRecords(state.partition, start, end, records), inputs, parent,
                          links, mode, replay, payload, planned=True,
                          backfill=min(backfills) if mode == "backfill" else "")

    def replan(self, payload: bytes, arr: Arrival) -> PlannedRun:
        try:
            d = orjson.loads(payload)
            state = PartitionState.from_json(d["state"])
            run_id = str(d["run_id"])
            if arr.replay:
                run_id = stable_id(run_id, f"replay-{arr.replay}")
            return self.plan(state, run_id, arr.traceparent, arr.replay)
        except (ValueError, KeyError, TypeError) as e:
            raise Refused(f"unreadable planned window run: {type(e).__name__}: {e}") from None

    def _due(self, now_ms: int) -> list[str]:
        """Open windows past their deadline, popped from the deadline heap."""
        due, states = [], self.store.states
        for key in self._deadlines.due(now_ms):  # a restored window may be in twice
            state = states.get(key)
            if state is not None and state.fired is None and key not in due:
                due.append(key)
        return due

    def expired(self) -> list[tuple[PlannedRun, DeadlinePolicy, OutMessage]]:
        """Windows still open at their wall-clock deadline (their watermark never came)."""
        due: list[tuple[PlannedRun, DeadlinePolicy, OutMessage]] = []
        for key in self._due(int(time.time() * 1000)):
            state = self.store.states[key]
            state.fired = self._run_id(key, state, "deadline")
            last = next(reversed(state.slots.values()), None)
            parent = dict(last.headers).get(H_TRACEPARENT) if last is not None else None
            due.append((self.plan(state, state.fired, parent), self.window.on_deadline,
                        self.store.header(key, state)))
        return due

    def _head(self) -> int | None:
        """The earliest pending deadline (ms), stale heap entries dropped on the way."""
        states = self.store.states
        while (head := self._deadlines.head()) is not None:
            state = states.get(head[1])
            if state is not None and state.fired is None:
                return head[0]
            self._deadlines.pop()
        return None

    def next_deadline_s(self) -> float | None:
        """Seconds until the earliest open window's deadline (None: no deadline pending)."""
        head = self._head()
        return None if head is None else (head - time.time() * 1000) / 1000

    def any_expired(self) -> bool:
        head = self._head()
        return head is not None and head <= time.time() * 1000

    def missing(self, plan: PlannedRun) -> list[str]:
        return []

    def deadline_reason(self, plan: PlannedRun) -> str:
        assert isinstance(plan.arg, WindowRecords)
        return (f"window [{_iso(plan.arg.start_ms)}, {_iso(plan.arg.end_ms)}) of partition "
                f"{plan.partition!r} missed its deadline: the watermark never closed it")

    def alert_text(self, plan: PlannedRun, what: str) -> str:
        return f"{self.deadline_reason(plan)}; {what}"
