"""Quality gates: a stage's checks run on its inputs before the stage function does.

A failing error-level check *holds* the run's partition key at that stage: the run does not
run, its failing records go to the dead-letter topic with the check and the offending values,
and one alert is raised. While the key is held, later runs for it are *parked* in the hold, so
nothing downstream moves for that key; other keys flow on. A passing new version of the held
input (the same record key, or any new firing of a barrier or window) or the held run's replay
(``streamflow runs retry``) releases it, and the parked runs then run in order.

Holds live in the compacted topic ``<namespace>.holds.<stage>``, on the input's partition
number, written in the same publish as the run's outcome: a restarted worker knows what it
held, and does not alert again.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel

from streamflow.errors import StreamFlowError
from streamflow.model import (
    H_PLANNED,
    Alert,
    AlertKind,
    Check,
    CheckResult,
    Inputs,
    Message,
    OutMessage,
    PlannedRun,
    RunInput,
    RunRecord,
    StageSpec,
    WindowRecords,
    hold_topic,
    passed,
    run_checks,
    withheld,
    withhold_values,
)
from streamflow.observability import Metrics, trace_id_of
from streamflow.state import StateStore
from streamflow.transports import Transport

from ._alerts import Alerter

log = logging.getLogger("streamflow.gates")
ANY = "*"  # a barrier's or window's input key: any new firing is a new version of its inputs
MAX_PARKED_BYTES = 512 * 1024
"""Parked runs per held key, in bytes: the hold is one changelog record, and Kafka caps a
record at 1 MB. Beyond this, inputs go to dead letters (replayable) instead of the hold."""


class GateFailed(StreamFlowError):
    """Why a gate held a run; it travels as the dead letter's ``error``, with the results."""

    def __init__(self, message: str, checks: list[dict[str, Any]]) -> None:
        super().__init__(message)
        self.checks = checks


@dataclass(slots=True)
class Hold:
    """One held partition key of one stage."""

    partition: str
    kafka_partition: int
    since_ms: int
    held_by: dict[str, str] = field(default_factory=dict)
    """Held run id -> its input key; the key is released once none is left."""
    checks: list[dict[str, Any]] = field(default_factory=list)
    parked: list[dict[str, Any]] = field(default_factory=list)
    """Runs that came in while held: their input messages, run again on release."""
    parked_bytes: int = 0

    def to_json(self) -> dict[str, Any]:
        return {"partition": self.partition, "kafka_partition": self.kafka_partition,
                "since_ms": self.since_ms, "held_by": self.held_by, "checks": self.checks,
                "parked": self.parked, "parked_bytes": self.parked_bytes}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Hold:
        return cls(str(d["partition"]), int(d["kafka_partition"]), int(d["since_ms"]),
                   dict(d.get("held_by", {})), list(d.get("checks", [])),
                   list(d.get("parked", [])), int(d.get("parked_bytes", 0)))


@dataclass(slots=True)
class Verdict:
    results: list[CheckResult]
    records: list[BaseModel]
    inputs: list[RunInput]
    as_json: list[dict[str, Any]] | None = None
    clean: bool = False
    """Every check passed (the common case, decided without a walk)."""

    @property
    def failed(self) -> list[CheckResult]:
        return [r for r in self.results if not r.passed and r.level == "error"]

    def json(self) -> list[dict[str, Any]]:
        if self.as_json is None:
            self.as_json = [r.to_json() for r in self.results]
        return self.as_json

    def summary(self) -> str:
        return "; ".join(f"check {r.check} failed: {r.detail}" for r in self.failed)

    def failing_records(self) -> list[tuple[int, list[CheckResult]]]:
        """Each record some error-level check failed, with the checks it failed."""
        by_index: dict[int, list[CheckResult]] = {}
        for r in self.failed:
            for i in r.failing:
                by_index.setdefault(i, []).append(r)
        return sorted(by_index.items())


class Gatekeeper:
    """The checks and holds of one stage, shared by its input lane and its retry lane."""

    def __init__(self, spec: StageSpec, transport: Transport, namespace: str, metrics: Metrics,
                 alerter: Alerter, pipeline: str, history: Sequence[int] = (),
                 held: Sequence[RunRecord] = ()) -> None:
        self.spec, self.metrics, self.alerter, self.pipeline = spec, metrics, alerter, pipeline
        self.input_topic = spec.inputs[0].topic(namespace)
        self.held_runs: dict[str, tuple[list[RunInput], list[dict[str, Any]] | None]] = {
            r.run_id: (r.inputs, r.checks) for r in held}
        """Held runs' inputs and results, so their ``released`` ledger record keeps them (the
        ledger is compacted by run id)."""
        self.checks: tuple[Check, ...] = tuple(spec.checks)
        self.store: StateStore[Hold] = StateStore(
            transport, hold_topic(namespace, spec.name), spec.name, Hold.from_json)
        self.history: deque[int] = deque(history, maxlen=64)
        """Input counts of earlier passing runs, oldest first (row-count checks)."""
        # Every check's shared "ok" result: a run where all pass needs no new objects.
        self._ok = [passed(c) for c in self.checks]
        self._ok_json = [r.to_json() for r in self._ok]
        self._ok_labels = [(spec.name, c.name, "passed") for c in self.checks]
        self.lock = asyncio.Lock()
        self._pending: list[Alert] = []
        """Both lanes of the stage decide and publish under it, so neither publishes a hold
        (or a ledger record) the other has already moved past."""

    def held(self, partition: str, key: str) -> bool:
        """Whether a run with input ``key`` is held for ``partition`` (its new version may
        release it)."""
        hold = self.store.states.get(partition)
        return hold is not None and key in hold.held_by.values()

    def hold_of(self, partition: str) -> Hold | None:
        return self.store.states.get(partition)

    @staticmethod
    def input_key(plan: PlannedRun, m: Message | None, asset: str) -> str:
        """What a new version of this run's input shares with it: the record key, or the
        window; any new firing of a barrier is a new version of its inputs."""
        if isinstance(plan.arg, WindowRecords):
            return f"window:{plan.arg.start_ms}"
        if plan.planned or m is None:
            return ANY
        first = plan.inputs[0].arrival_id if plan.inputs else plan.run_id
        return f"{asset}:{m.key.decode('utf-8', 'replace') if m.key is not None else first}"

    def check(self, plan: PlannedRun) -> Verdict:
        records, inputs = _records(plan)
        results = run_checks(self.checks, records, self.history)
        tally, stage = self.metrics.gate_checks, self.spec.name
        if all(r is ok for r, ok in zip(results, self._ok, strict=True)):  # the common case
            for labels in self._ok_labels:
                tally[labels] = tally.get(labels, 0) + 1
            return Verdict(results, records, inputs, self._ok_json, clean=True)
        results = withhold_values(results, records)
        for r in results:  # once per check per run: kept to plain dict arithmetic
            outcome = "passed" if r.passed else ("failed" if r.level == "error" else "warned")
            labels = (stage, r.check, outcome)
            tally[labels] = tally.get(labels, 0) + 1
            if outcome == "warned":
                log.warning("stage %s, partition %r, run %s: warn-level check %s: %s",
                            stage, plan.partition, plan.run_id, r.check, r.detail)
        return Verdict(results, records, inputs)

    def passed(self, verdict: Verdict) -> None:
        self.history.append(len(verdict.records))

    def hold(self, plan: PlannedRun, key: str, verdict: Verdict
             ) -> tuple[bool, list[str], OutMessage]:
        """Hold the run's partition key: whether it was not held before (alert then), the
        held runs this one replaces (the same input failing again), the changelog update."""
        hold = self.store.states.get(plan.partition)
        new = hold is None
        if hold is None:
            hold = Hold(plan.partition, plan.kafka_partition, int(time.time() * 1000))
            self.store.states[plan.partition] = hold
        # A run that fails again for the same input replaces its predecessor.
        replaced = [r for r, k in hold.held_by.items() if k == key and r != plan.run_id]
        for rid in replaced:
            del hold.held_by[rid]
        hold.held_by[plan.run_id] = key
        hold.checks = verdict.json()
        self.held_runs[plan.run_id] = (list(plan.inputs), hold.checks)
        self._gauge()
        return new, replaced, self.store.message(plan.partition, hold)

    def park(self, hold: Hold, plan: PlannedRun, m: Message | None) -> OutMessage | None:
        """Park a run in the hold: its input message, or a planned run's payload. None when
        the hold is full (the caller dead-letters it)."""
        if plan.planned or m is None:
            m = Message(self.input_topic, hold.kafka_partition, -1, None,
                        plan.body(), [(H_PLANNED, b"1")], 0)
        entry = {"topic": m.topic, "key": m.key.decode("latin-1") if m.key is not None else None,
                 "value": m.value.decode("latin-1"),
                 "headers": [[k, v.decode("latin-1")] for k, v in m.headers]}
        if entry not in hold.parked:  # a redelivered input is parked once
            size = len(m.value) + sum(len(k) + len(v) for k, v in m.headers)
            if hold.parked_bytes + size > MAX_PARKED_BYTES:
                return None
            hold.parked.append(entry)
            hold.parked_bytes += size
        return self.store.message(hold.partition, hold)

    def clear(self, plan: PlannedRun, key: str
              ) -> tuple[list[str], list[Message], list[OutMessage]]:
        """A run for a held key passed: drop the held runs it supersedes. Returns their ids,
        the parked inputs to run now if that released the key, and the changelog update."""
        hold = self.store.states.get(plan.partition)
        if hold is None:
            return [], [], []
        cleared = [r for r, k in hold.held_by.items() if key == ANY or k == key]
        for r in cleared:
            del hold.held_by[r]
        if hold.held_by:
            return cleared, [], [self.store.message(hold.partition, hold)]
        del self.store.states[plan.partition]
        self._gauge()
        parked = [Message(str(e["topic"]), hold.kafka_partition, -1,
                          e["key"].encode("latin-1") if e["key"] is not None else None,
                          str(e["value"]).encode("latin-1"),
                          [(k, v.encode("latin-1")) for k, v in e["headers"]], 0)
                  for e in hold.parked]
        return cleared, parked, [self.store.tombstone(hold.partition, hold.kafka_partition)]

    def alert(self, kind: AlertKind, plan: PlannedRun, summary: str,
              checks: list[dict[str, Any]]) -> None:
        """Queue an alert; it goes out once the hold it reports is published (``sent``), so a
        crash in between re-decides it after restart instead of alerting twice."""
        trace_id = trace_id_of(plan.parent)
        self._pending.append(Alert(kind, self.pipeline, self.spec.name, plan.partition,
                                   plan.run_id, withheld(summary), checks,
                                   int(time.time() * 1000),
                                   trace_id))

    def published(self) -> None:
        """The lane's outputs, holds included, are durable: send what they alert about."""
        for a in self._pending:
            self.alerter.emit(a)
        self._pending.clear()

    def _gauge(self) -> None:
        self.metrics.held[self.spec.name] = float(len(self.store.states))


def _records(plan: PlannedRun) -> tuple[list[BaseModel], list[RunInput]]:
    """The run's input records in a stable order, each with the input it came from."""
    arg = plan.arg
    if isinstance(arg, WindowRecords):
        by_asset: dict[str, list[RunInput]] = {}
        for i in plan.inputs:
            by_asset.setdefault(i.asset, []).append(i)
        records = [r for rs in arg.values() for r in rs]
        inputs = [i for name in arg for i in by_asset.get(name, [])]
        return records, inputs
    if isinstance(arg, Inputs):
        names = sorted(arg)
        by_name = {i.asset: i for i in plan.inputs}
        return [arg[n] for n in names], [by_name[n] for n in names if n in by_name]
    return [arg], list(plan.inputs)
