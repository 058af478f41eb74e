"""The engine side of event-time windows: records gathered per window in the changelog.

Each window (partition key x window start) is a state record in ``<namespace>.state.<stage>``
holding its records; it is kept, marked fired, once it closes, so a record that arrives for a
closed window is recognised as late. The watermark of an input partition is the highest event
time seen on it, recomputed from the restored states when the partition moves.
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
    stable_id,
    state_topic,
)
from streamflow.state import StateStore
from streamflow.transports import Transport

from ._protocol import Late, never_held
from ._state import PartitionState, Slot

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
        self.store: StateStore[PartitionState] = StateStore(
            transport, state_topic(namespace, spec.name), spec.name, PartitionState.from_json)
        self._watermarks: dict[int, int] = {}
        self.held: Callable[[str, str], bool] = never_held
        """Whether a gate holds a window (partition key, ``window:<start ms>``): that window
        then takes new versions; every other fired window stays closed."""

    async def restore(self, partitions: set[int]) -> None:
        await self.store.restore(partitions)

    async def forget(self, partitions: set[int]) -> None:
        await self.store.forget(partitions)
        for p in partitions:
            self._watermarks.pop(p, None)

    async def ensure_restored(self, partition: int) -> None:
        await self.store.ensure_restored(partition)

    def watermark(self, partition: int) -> int:
        wm = self._watermarks.get(partition)
        if wm is None:
            wm = max((s.max_event_ms for s in self.store.states.values()
                      if s.kafka_partition == partition), default=0)
            self._watermarks[partition] = wm
        return wm

    def offer(self, m: Message, arr: Arrival, asset: Asset[Any], record: BaseModel | None = None
              ) -> tuple[list[PlannedRun], list[OutMessage]]:
        w, states = self.window, self.store.states
        start = w.start_of(arr.event_time_ms)
        key = f"{arr.partition}@{start}"
        state = states.get(key)
        wm = self.watermark(m.partition)
        # A window a gate holds takes new versions: a corrected record replaces its
        # predecessor (same record key) and the window fires again, which may release it.
        held = (state is not None and state.fired is not None
                and self.held(arr.partition, f"window:{start}"))
        if not held and ((state is not None and state.fired is not None)
                         or wm >= w.closes_at(start)):
            raise Late(
                f"late: event time {_iso(arr.event_time_ms)} of partition {arr.partition!r} "
                f"falls in window [{_iso(start)}, {_iso(start + int(w.size_s * 1000))}), "
                f"closed at watermark {_iso(w.closes_at(start))} (allowed lateness "
                f"{w.allowed_lateness_s}s); the watermark is {_iso(wm)}")
        if state is None:
            state = PartitionState(arr.partition, m.partition, int(time.time() * 1000),
                                   window_start_ms=start)
            states[key] = state
        if arr.arrival_id in state.slots:
            return [], []  # a duplicate or redelivery
        rkey = m.key.decode("utf-8", "replace") if m.key is not None else None
        if held and rkey is not None:
            for aid in [a for a, s in state.slots.items() if s.key == rkey]:
                del state.slots[aid]
        state.slots[arr.arrival_id] = Slot(arr.arrival_id, arr.version, m.value,
                                           list(m.headers), rkey)
        state.max_event_ms = max(state.max_event_ms, arr.event_time_ms)
        if held:
            state.fired = stable_id(self.spec.name, key, *sorted(state.slots))
            return ([self.plan(state, state.fired, arr.traceparent)],
                    [self.store.message(key, state)])
        msgs = [self.store.message(key, state)]
        wm = self._watermarks[m.partition] = max(wm, arr.event_time_ms)
        plans = []
        for k, s in sorted(states.items(), key=lambda kv: kv[1].window_start_ms or 0):
            if (s.kafka_partition == m.partition and s.fired is None
                    and s.window_start_ms is not None and wm >= w.closes_at(s.window_start_ms)):
                s.fired = stable_id(self.spec.name, k, *sorted(s.slots))
                msgs.append(self.store.message(k, s))
                plans.append(self.plan(s, s.fired, arr.traceparent))
        return plans, msgs

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

    def replan(self, payload: bytes, arr: Arrival) -> PlannedRun | None:
        try:
            d = orjson.loads(payload)
            state = PartitionState.from_json(d["state"])
            run_id = str(d["run_id"])
            if arr.replay:
                run_id = stable_id(run_id, f"replay-{arr.replay}")
            return self.plan(state, run_id, arr.traceparent, arr.replay)
        except (ValueError, KeyError, TypeError) as e:
            log.error("stage %s: unreadable planned window run dropped: %s", self.spec.name, e)
            return None

    def _overdue(self, state: PartitionState, now_ms: int) -> bool:
        d = self.window.deadline_s
        return (d is not None and state.fired is None
                and now_ms - state.first_seen_ms >= d * 1000)

    def expired(self) -> list[tuple[PlannedRun, DeadlinePolicy, OutMessage]]:
        """Windows still open at their wall-clock deadline (their watermark never came)."""
        now = int(time.time() * 1000)
        due: list[tuple[PlannedRun, DeadlinePolicy, OutMessage]] = []
        for key, state in self.store.states.items():
            if self._overdue(state, now):
                state.fired = stable_id(self.spec.name, key, *sorted(state.slots), "deadline")
                last = next(reversed(state.slots.values()), None)
                parent = dict(last.headers).get(H_TRACEPARENT) if last is not None else None
                due.append((self.plan(state, state.fired, parent), self.window.on_deadline,
                            self.store.message(key, state)))
        return due

    def next_deadline_s(self) -> float | None:
        """Seconds until the earliest open window's deadline (None: no deadline pending)."""
        d = self.window.deadline_s
        firsts = [s.first_seen_ms for s in self.store.states.values() if s.fired is None]
        if d is None or not firsts:
            return None
        return (min(firsts) + d * 1000 - time.time() * 1000) / 1000

    def any_expired(self) -> bool:
        now = int(time.time() * 1000)
        return any(self._overdue(s, now) for s in self.store.states.values())

    def missing(self, plan: PlannedRun) -> list[str]:
        return []

    def deadline_reason(self, plan: PlannedRun) -> str:
        assert isinstance(plan.arg, WindowRecords)
        return (f"window [{_iso(plan.arg.start_ms)}, {_iso(plan.arg.end_ms)}) of partition "
                f"{plan.partition!r} missed its deadline: the watermark never closed it")

    def alert_text(self, plan: PlannedRun, what: str) -> str:
        return f"{self.deadline_reason(plan)}; {what}"
