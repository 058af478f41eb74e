"""The pure barrier state machine: per partition key, the latest arrival of each input (its
*slots*), and when ``AllOf`` or ``AnyOf`` fires. No I/O, no clock of its own: the engine
persists the states in a changelog topic and runs what the machine decides."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from streamflow.model import AllOf, AnyOf, stable_id


@dataclass(slots=True)
class Slot:
    """The latest arrival of one input for one partition: enough to rebuild and re-run."""

    arrival_id: str
    version: int
    value: bytes
    headers: list[tuple[str, bytes]]
    key: str | None = None
    """The record key: a corrected record replaces its predecessor in a held window."""
    record: Any = None
    """The validated record, from its arrival until the run it fires (never persisted)."""
    encoded: dict[str, Any] | None = None
    """``to_json``'s answer while its barrier is open: a slot does not change once made, and
    every later arrival for its partition writes it to the changelog again (dropped when the
    barrier fires: a fired state may be kept for a long retention)."""

    def to_json(self, keep: bool = False) -> dict[str, Any]:
        """``keep``: remember the answer (a barrier's slot, written again with its state)."""
        d = self.encoded
        if d is None:
            d = {"arrival_id": self.arrival_id, "version": self.version,
                 "value": self.value.decode(),
                 "headers": [[k, v.decode("latin-1")] for k, v in self.headers]}
            if self.key is not None:
                d["key"] = self.key
            if keep:
                self.encoded = d
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Slot:
        return cls(d["arrival_id"], int(d["version"]), str(d["value"]).encode(),
                   [(k, v.encode("latin-1")) for k, v in d["headers"]], d.get("key"))


@dataclass(slots=True)
class PartitionState:
    partition: str
    kafka_partition: int
    first_seen_ms: int
    slots: dict[str, Slot] = field(default_factory=dict)
    fired: str | None = None
    """The last run id fired (or skipped) for this partition; None while the barrier is open."""
    window_start_ms: int | None = None
    max_event_ms: int = 0

    def to_json(self, slots: bool = True) -> dict[str, Any]:
        """``slots=False``: the window header (its slots are records of their own)."""
        d = {"partition": self.partition, "kafka_partition": self.kafka_partition,
             "first_seen_ms": self.first_seen_ms, "fired": self.fired,
             "window_start_ms": self.window_start_ms, "max_event_ms": self.max_event_ms}
        if slots:
            d["slots"] = {a: s.to_json(keep=True) for a, s in self.slots.items()}
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> PartitionState:
        return cls(d["partition"], int(d["kafka_partition"]), int(d["first_seen_ms"]),
                   {a: Slot.from_json(s) for a, s in d.get("slots", {}).items()},
                   d.get("fired"), d.get("window_start_ms"), int(d.get("max_event_ms", 0)))


@dataclass(frozen=True, slots=True)
class Fire:
    run_id: str
    slots: dict[str, Slot]
    completing: str | None
    """The input whose arrival completed the barrier (the run's trace parent), if any."""


class Barrier:
    """Decides, for AllOf and AnyOf stages, when a partition fires."""

    def __init__(self, stage: str, inputs: Sequence[str], trigger: AllOf | AnyOf) -> None:
        self.stage, self.inputs, self.trigger = stage, list(inputs), trigger

    def run_id(self, partition: str, slots: dict[str, Slot]) -> str:
        return stable_id(self.stage, partition, *sorted(s.arrival_id for s in slots.values()))

    def offer(self, state: PartitionState, asset: str, slot: Slot,
              refire: bool = False) -> Fire | None:
        """Record ``slot`` for ``asset`` in ``state`` (mutated) and say whether to fire.

        ``refire``: a fired partition fires again on a new version whatever ``on_new_version``
        says (a gate holds it, and the new version may release it)."""
        old = state.slots.get(asset)
        if old is not None and (old.arrival_id == slot.arrival_id or old.value == slot.value):
            return None  # a redelivery, or the same content again: nothing new
        state.slots[asset] = slot  # a new arrival for this input and partition: a new version
        if isinstance(self.trigger, AnyOf) or (refire and state.fired is not None):
            return self._fire(state, asset)
        if len(state.slots) < len(self.inputs):
            return None
        if (state.fired is not None and self.trigger.on_new_version == "ignore"
                and not refire):
            return None
        return self._fire(state, asset)

    def _fire(self, state: PartitionState, completing: str | None) -> Fire | None:
        run_id = self.run_id(state.partition, state.slots)
        if run_id == state.fired:
            return None
        state.fired = run_id
        return Fire(run_id, dict(state.slots), completing)

    def expired(self, state: PartitionState, now_ms: int) -> bool:
        t = self.trigger
        return (isinstance(t, AllOf) and t.deadline_s is not None and state.fired is None
                and now_ms - state.first_seen_ms >= t.deadline_s * 1000
                and all(r in state.slots for r in t.required))

    def on_deadline(self, state: PartitionState) -> Fire:
        """The deadline passed: mark the partition done; the engine applies the policy."""
        run_id = stable_id(self.run_id(state.partition, state.slots), "deadline")
        state.fired = run_id
        return Fire(run_id, dict(state.slots), None)
