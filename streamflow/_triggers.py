"""Trigger conditions and the pure barrier state machine (no I/O, no clock of its own).

A stage with several inputs keeps, per partition key, the latest arrival of each input (its
*slots*). ``AllOf`` fires once every input has arrived for that partition; ``AnyOf`` fires on
every new arrival with whatever has arrived so far. The state machine decides; the engine
persists its states in a changelog topic and runs what it decides.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel

from ._model import Asset, stable_id

DeadlinePolicy = Literal["fire", "skip", "fail"]


@dataclass(frozen=True, slots=True)
class OnEach:
    """Fire once per arrival of any input (the default)."""


@dataclass(frozen=True, slots=True)
class AnyOf:
    """Fire on each new arrival, with the latest arrival of every input seen for its partition."""


@dataclass(frozen=True, slots=True)
class AllOf:
    """A barrier: fire once all inputs have arrived for the same partition key.

    ``deadline_s`` counts from the partition's first arrival. When it passes first,
    ``on_deadline`` decides: ``fire`` with what arrived, ``skip`` (and alert), or ``fail`` (the
    arrived inputs go to dead letters). A newer version of an input after the barrier fired
    re-fires it (``on_new_version="refire"``) or is ignored (the default).

    ``required`` names inputs the deadline policy never goes without: past the deadline the
    barrier keeps waiting for them (an upstream gate may be holding one), and applies the
    policy as soon as they are in. Optional inputs (a loyalty snapshot) are left to the policy.
    """

    deadline_s: float | None = None
    on_deadline: DeadlinePolicy = "fire"
    on_new_version: Literal["refire", "ignore"] = "ignore"
    required: Sequence[str | Asset[Any]] = ()

    def __post_init__(self) -> None:
        if self.deadline_s is not None and self.deadline_s <= 0:
            raise ValueError(f"AllOf.deadline_s must be > 0, got {self.deadline_s}")
        object.__setattr__(self, "required", tuple(
            r if isinstance(r, str) else r.name for r in self.required))


@dataclass(frozen=True, slots=True)
class Window:
    """An event-time tumbling window per partition key: fires once with every record whose
    event time falls in [start, start + size_s), when the watermark (the highest event time seen
    on that input partition) passes the window's end plus ``allowed_lateness_s``. A record for a
    window that has already closed goes to dead letters with the reason ``late``.

    The watermark only moves with event time, so a quiet partition's window could stay open for
    ever: ``deadline_s`` (wall-clock, from the window's first record) bounds that, and
    ``on_deadline`` says what then happens, as for a barrier: ``fire`` with what arrived,
    ``skip`` (and alert) or ``fail`` (dead letters)."""

    size_s: float
    allowed_lateness_s: float = 0.0
    deadline_s: float | None = None
    on_deadline: DeadlinePolicy = "fire"

    def __post_init__(self) -> None:
        if self.size_s <= 0 or self.allowed_lateness_s < 0:
            raise ValueError("Window needs size_s > 0 and allowed_lateness_s >= 0")
        if self.deadline_s is not None and self.deadline_s <= 0:
            raise ValueError(f"Window.deadline_s must be > 0, got {self.deadline_s}")

    def start_of(self, event_ms: int) -> int:
        size = int(self.size_s * 1000)
        return event_ms - event_ms % size

    def closes_at(self, start_ms: int) -> int:
        """The watermark at which the window [start, start + size) closes."""
        return start_ms + int(self.size_s * 1000) + int(self.allowed_lateness_s * 1000)


Trigger = OnEach | AnyOf | AllOf | Window


@dataclass(slots=True)
class Slot:
    """The latest arrival of one input for one partition: enough to rebuild and re-run."""

    arrival_id: str
    version: int
    value: bytes
    headers: list[tuple[str, bytes]]
    key: str | None = None
    """The record key: a corrected record replaces its predecessor in a held window."""

    def to_json(self) -> dict[str, Any]:
        d: dict[str, Any] = {"arrival_id": self.arrival_id, "version": self.version,
             "value": self.value.decode(),
             "headers": [[k, v.decode("latin-1")] for k, v in self.headers]}
        if self.key is not None:
            d["key"] = self.key
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

    def to_json(self) -> dict[str, Any]:
        return {"partition": self.partition, "kafka_partition": self.kafka_partition,
                "first_seen_ms": self.first_seen_ms, "fired": self.fired,
                "window_start_ms": self.window_start_ms, "max_event_ms": self.max_event_ms,
                "slots": {a: s.to_json() for a, s in self.slots.items()}}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> PartitionState:
        return cls(d["partition"], int(d["kafka_partition"]), int(d["first_seen_ms"]),
                   {a: Slot.from_json(s) for a, s in d["slots"].items()}, d.get("fired"),
                   d.get("window_start_ms"), int(d.get("max_event_ms", 0)))


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
        if old is not None and old.arrival_id == slot.arrival_id:
            return None  # a duplicate or redelivery: nothing new
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


class WindowRecords(dict[str, list[BaseModel]]):
    """What a window stage receives: every record of the window by input asset name, in
    arrival order, with the window's bounds and partition key."""

    def __init__(self, partition: str, start_ms: int, end_ms: int,
                 records: dict[str, list[BaseModel]]) -> None:
        super().__init__(records)
        self.partition, self.start_ms, self.end_ms = partition, start_ms, end_ms

    def all(self) -> list[BaseModel]:
        return [r for rs in self.values() for r in rs]


class Inputs(dict[str, BaseModel]):
    """What a multi-input stage receives: the latest record of each input that has arrived,
    by asset name (``inputs["sales"]`` or ``inputs[sales]``), and the partition key."""

    def __init__(self, partition: str, records: dict[str, BaseModel]) -> None:
        super().__init__(records)
        self.partition = partition

    def __getitem__(self, key: str | Asset[Any]) -> BaseModel:
        return super().__getitem__(key if isinstance(key, str) else key.name)

    def missing(self, expected: Sequence[str]) -> list[str]:
        return [a for a in expected if a not in self]
