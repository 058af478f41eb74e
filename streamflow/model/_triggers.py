"""Trigger conditions, and what a multi-input or window stage function receives.

A stage with several inputs keeps, per partition key, the latest arrival of each input (its
*slots*). ``AllOf`` fires once every input has arrived for that partition; ``AnyOf`` fires on
every new arrival with whatever has arrived so far. The state machine decides; the engine
persists its states in a changelog topic and runs what it decides.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel

from streamflow.errors import PipelineError

from ._assets import Asset

DeadlinePolicy = Literal["fire", "skip", "fail"]
RETENTION_S = 86_400.0
"""How long, in event time, a fired barrier's state is kept by default."""


def _check_retention(kind: str, retention_s: float | None) -> None:
    if retention_s is not None and retention_s <= 0:
        raise PipelineError(f"{kind}.retention_s must be > 0 (or None: kept for ever), "
                            f"got {retention_s}")


@dataclass(frozen=True, slots=True)
class OnEach:
    """Fire once per arrival of any input (the default)."""


@dataclass(frozen=True, slots=True)
class AnyOf:
    """Fire on each new arrival, with the latest arrival of every input seen for its partition.

    ``retention_s``: as for ``AllOf``."""

    retention_s: float | None = RETENTION_S

    def __post_init__(self) -> None:
        _check_retention("AnyOf", self.retention_s)


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

    ``retention_s`` bounds the state: a fired partition is forgotten once the input
    partition's watermark (its highest event time) is that far past the partition's newest
    input, and a live arrival older than the watermark by as much is dead-lettered as late
    (its partition may have been forgotten). ``None`` keeps fired partitions for ever.
    """

    deadline_s: float | None = None
    on_deadline: DeadlinePolicy = "fire"
    on_new_version: Literal["refire", "ignore"] = "ignore"
    required: Sequence[str | Asset[Any]] = ()
    retention_s: float | None = RETENTION_S

    def __post_init__(self) -> None:
        _check_retention("AllOf", self.retention_s)
        if self.deadline_s is not None and self.deadline_s <= 0:
            raise PipelineError(f"AllOf.deadline_s must be > 0, got {self.deadline_s}")
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
    ``skip`` (and alert) or ``fail`` (dead letters).

    A window keeps one record per input asset and record key (``keep="last"``): a new version
    replaces the old one and a re-delivery with the same content changes nothing, so a sale
    sent twice is counted once. ``keep="all"`` keeps every arrival instead (records without a
    key are always kept one per arrival). A window takes at most ``max_records`` records; the
    next ones are dead-lettered with that reason rather than growing without bound. A window
    is forgotten once it has fired and closed: a record for it is then recognised as late by
    the watermark alone."""

    size_s: float
    allowed_lateness_s: float = 0.0
    deadline_s: float | None = None
    on_deadline: DeadlinePolicy = "fire"
    keep: Literal["last", "all"] = "last"
    max_records: int = 100_000

    def __post_init__(self) -> None:
        if self.size_s <= 0 or self.allowed_lateness_s < 0:
            raise PipelineError("Window needs size_s > 0 and allowed_lateness_s >= 0")
        if self.keep not in ("last", "all"):
            raise PipelineError(f"Window.keep must be 'last' or 'all', got {self.keep!r}")
        if self.max_records < 1:
            raise PipelineError(f"Window.max_records must be >= 1, got {self.max_records}")
        if self.deadline_s is not None and self.deadline_s <= 0:
            raise PipelineError(f"Window.deadline_s must be > 0, got {self.deadline_s}")

    def start_of(self, event_ms: int) -> int:
        size = int(self.size_s * 1000)
        return event_ms - event_ms % size

    def closes_at(self, start_ms: int) -> int:
        """The watermark at which the window [start, start + size) closes."""
        return start_ms + int(self.size_s * 1000) + int(self.allowed_lateness_s * 1000)


Trigger = OnEach | AnyOf | AllOf | Window


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
