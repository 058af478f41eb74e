"""Runs: one firing of a stage for one partition, its deterministic id, and what the ledger
records of each attempt."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import orjson
from pydantic import BaseModel

from ._arrivals import Arrival
from ._assets import stable_id, stable_id3
from ._headers import Mode
from ._messages import OutMessage

RunStatus = Literal["succeeded", "retrying", "dead-lettered", "skipped", "held", "parked",
                    "released"]
# A held run never runs again as such: its replay (`runs retry`) or a new version does.
FINAL: frozenset[str] = frozenset({"succeeded", "dead-lettered", "held", "released"})


@dataclass(frozen=True, slots=True)
class RunInput:
    """One arrival a run consumed (a plain dataclass: one is built per record, and a pydantic
    model cost 2 µs to construct)."""

    asset: str
    partition: str
    version: int
    arrival_id: str


class RunRecord(BaseModel):
    """What happened to one attempt of one run."""

    run_id: str
    stage: str
    partition: str
    status: RunStatus
    attempt: int
    max_attempts: int
    started_ms: int
    ended_ms: int
    mode: Mode = "live"
    replay: int = 0
    inputs: list[RunInput]
    outputs: list[str] = []
    error: dict[str, Any] | None = None
    trace_id: str | None = None
    """The W3C trace id of the record that fired the run (sampled or not)."""
    checks: list[dict[str, Any]] | None = None
    """Quality-gate results on the run's inputs, when the stage has checks."""
    backfill: str | None = None
    """The backfill this run belongs to (mode ``backfill``)."""
    output: str | None = None
    """The asset its outputs are arrivals of: ``streamflow lineage`` walks upstream by it."""

    def message(self, topic: str) -> OutMessage:
        return OutMessage(topic, orjson.dumps(self.model_dump()), self.run_id.encode(), [])


def run_id_of(stage: str, arr: Arrival) -> str:
    """Deterministic: a redelivered arrival maps to the same run (a backfill overlapping live
    data too); a replay, or a backfill that reprocesses, makes a new one."""
    if arr.rerun:
        return stable_id(stage, arr.partition, arr.arrival_id, f"rerun-{arr.rerun}")
    if arr.replay:
        return stable_id(stage, arr.partition, arr.arrival_id, f"replay-{arr.replay}")
    return stable_id3(stage, arr.partition, arr.arrival_id)


@dataclass(slots=True)
class PlannedRun:
    """One firing: what the stage function is called with, and what to record about it."""

    run_id: str
    partition: str
    arg: Any
    inputs: list[RunInput]
    parent: bytes | None
    links: list[bytes] = field(default_factory=list)
    mode: Mode = "live"
    replay: int = 0
    payload: bytes = b""
    """What a retry or dead letter carries to run it again: the record, or the planned inputs
    (read it with ``body()``)."""
    planned: bool = False
    kafka_partition: int = -1
    """The input partition number it came from: where a gate's hold on it is kept."""
    checks: list[dict[str, Any]] | None = None
    backfill: str = ""
    settles: bool = False
    """It may have a record on the ledger's compacted topic (an unparked run), which its
    settled record tombstones."""
    payload_of: Callable[[], bytes] | None = None
    """Builds ``payload`` on first need: a barrier's is the JSON of its slots, wanted only when
    the run is retried, dead-lettered or parked."""

    def body(self) -> bytes:
        if self.payload_of is not None:
            self.payload, self.payload_of = self.payload_of(), None
        return self.payload
