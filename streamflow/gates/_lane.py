"""A gated stage's side of a run: park behind a hold, check, hold and quarantine, release.

Gate code records what it decides through :class:`RunRecorder`, which the engine's stage
runner implements; the hold state itself is :class:`Gatekeeper`.
"""

from __future__ import annotations

import logging
import time
from typing import Any, Protocol

from opentelemetry.trace import SpanKind

from streamflow.model import (
    Arrival,
    Asset,
    DeadLetterKind,
    Message,
    OutMessage,
    PlannedRun,
    RunStatus,
)
from streamflow.observability import Metrics, RecSpan, Tracing, fail_span
from streamflow.state import record_message, settled_message

from ._gatekeeper import ANY, MAX_PARKED_BYTES, GateFailed, Gatekeeper, Verdict

log = logging.getLogger("streamflow.stage")


class RunRecorder(Protocol):
    """The stage a gate decides for: its ledger records, dead letters and fired runs."""

    name: str
    keeper: Gatekeeper | None
    runs_topic: str
    input_topic: str
    by_asset: dict[str, Asset[Any]]

    @property
    def max_attempts(self) -> int: ...

    @property
    def metrics(self) -> Metrics: ...

    @property
    def tracing(self) -> Tracing: ...

    def fire(self, plan: PlannedRun) -> None:
        """The run reached a final status: a redelivered input must not run it again."""

    def ledger_record(self, plan: PlannedRun, status: RunStatus, attempt: int, started: float,
                      outputs: list[str], exc: BaseException | None) -> OutMessage: ...

    def dead_letter_run(self, reason: str, plan: PlannedRun, m: Message | None,
                        parent: RecSpan | None, spans: list[RecSpan | None],
                        exc: BaseException | None, attempt: int,
                        kind: DeadLetterKind | None = None) -> OutMessage: ...

    def dead_letter(self, reason: str, m: Message, arr: Arrival, parent: RecSpan | None,
                    spans: list[RecSpan | None], exc: BaseException | None,
                    run_id: str | None = None, attempts: int | None = None,
                    kind: DeadLetterKind | None = None) -> OutMessage: ...


async def gate_run(runner: RunRecorder, plan: PlannedRun, attempt: int, m: Message | None,
                   out: list[OutMessage], spans: list[RecSpan | None], run: RecSpan | None,
                   started: float) -> tuple[bool, list[Message]]:
    """Check the run's inputs. False: it stops here (held, or parked behind a hold);
    else the parked inputs its passing released, to run after it."""
    keeper, mt, name = runner.keeper, runner.metrics, runner.name
    assert keeper is not None
    if not keeper.store.loaded(plan.kafka_partition):
        await keeper.store.ensure_restored(plan.kafka_partition)
    hold = keeper.hold_of(plan.partition)
    if hold is None:
        key = ""  # only needed to hold, park or release: worked out then
    else:
        key = keeper.input_key(plan, m, plan.inputs[0].asset if plan.inputs else "")
    if hold is not None and key != ANY and key not in hold.held_by.values():
        parking = keeper.park(hold, plan, m)
        if parking is None:
            reason = (f"stage {name!r}: partition {plan.partition!r} is held by its gate and "
                      f"its parking is full ({MAX_PARKED_BYTES} bytes); `streamflow dlq "
                      "replay` this once the partition is released")
            out.append(runner.dead_letter_run(reason, plan, m, run, spans, None, attempt, "gate"))
            out.append(runner.ledger_record(plan, "dead-lettered", attempt, started, [], None))
            runner.fire(plan)
        else:
            out.append(parking)
            out.append(runner.ledger_record(plan, "parked", attempt, started, [], None))
        mt.add(mt.runs, (name, "parked" if parking is not None else "dead-lettered"))
        return False, []
    verdict = keeper.check(plan)
    plan.checks = verdict.json()
    if run is not None:
        for r in verdict.results:
            run.add_event("check", {"streamflow.check": r.check,
                                    "streamflow.check.level": r.level,
                                    "streamflow.check.passed": r.passed,
                                    "streamflow.check.detail": r.detail})
    if not verdict.clean and verdict.failed:
        key = key or keeper.input_key(plan, m, plan.inputs[0].asset if plan.inputs else "")
        _hold_run(runner, plan, key, verdict, attempt, m, out, spans, run, started)
        return False, []
    keeper.passed(verdict)
    if hold is None:
        return True, []
    cleared, parked, msgs = keeper.clear(plan, key)
    out.extend(msgs)
    for rid in cleared:
        out += _released(runner, rid, plan, started, f"released by run {plan.run_id}")
    if keeper.hold_of(plan.partition) is None:
        log.info("stage %s: partition %r released by run %s (%d parked run(s) follow)",
                 name, plan.partition, plan.run_id, len(parked))
        keeper.alert("gate-released", plan,
                     f"partition {plan.partition!r} released by run {plan.run_id}; "
                     f"{len(parked)} parked run(s) resume", plan.checks)
    return True, parked



def _hold_run(runner: RunRecorder, plan: PlannedRun, key: str, verdict: Verdict, attempt: int,
              m: Message | None, out: list[OutMessage], spans: list[RecSpan | None],
              run: RecSpan | None, started: float) -> None:
    """Hold the partition: quarantine the failing records, record the run, alert once."""
    keeper, mt, name = runner.keeper, runner.metrics, runner.name
    assert keeper is not None
    reason = (f"stage {name!r} gate held partition {plan.partition!r} (run "
              f"{plan.run_id}): {verdict.summary()}")
    if run is None:  # not sampled: a held run is exported all the same
        run = runner.tracing.start_failure(
            f"run {name}", plan.parent, SpanKind.INTERNAL,
            {"streamflow.stage": name, "streamflow.run_id": plan.run_id,
             "streamflow.partition": plan.partition}, start_time=int(started * 1e9))
        spans.append(run)
    fail_span(run, None, reason)
    exc = GateFailed(reason, verdict.json())
    if plan.planned:  # a batch: each failing record on its own, with its checks
        for i, failed in verdict.failing_records():
            inp = verdict.inputs[i] if i < len(verdict.inputs) else None
            checks = [r.to_json() for r in failed]
            asset = runner.by_asset.get(inp.asset) if inp else None
            field = asset.key if asset is not None else None
            which = (f"record {field}={getattr(verdict.records[i], field)!r}" if field
                     else f"record {i + 1} of {len(verdict.records)}")
            why = f"{which} failed " + "; ".join(
                f"check {r.check} ({r.detail})" for r in failed)
            arr = Arrival(inp.arrival_id if inp else plan.run_id,
                          inp.asset if inp else "", plan.partition, 1, 0, plan.run_id,
                          plan.mode, None, b"")
            where = Message(runner.input_topic, plan.kafka_partition, -1, None,
                            verdict.records[i].model_dump_json().encode(), [], 0)
            out.append(runner.dead_letter(f"stage {name!r} gate, partition {plan.partition!r}: "
                                  f"{why}", where, arr, run, spans,
                                  GateFailed(why, checks), plan.run_id, attempt,
                                  kind="gate"))
    # The run itself, replayable by `streamflow runs retry` once the cause is fixed.
    out.append(runner.dead_letter_run(reason, plan, m, run, spans, exc, attempt, kind="gate"))
    new, replaced, msg = keeper.hold(plan, key, verdict)
    out.append(msg)
    for rid in replaced:  # the same input failed again: the newer run is the one held
        out += _released(runner, rid, plan, started,
                         f"superseded by run {plan.run_id}, which is held in its place")
    out.append(runner.ledger_record(plan, "held", attempt, started, [], exc))
    mt.add(mt.runs, (name, "held"))
    runner.fire(plan)
    if new:
        keeper.alert("gate-held", plan, reason, plan.checks or [])


def _released(runner: RunRecorder, run_id: str, by: PlannedRun, started: float,
              why: str) -> list[OutMessage]:
    """The ledger record of a held run that no longer holds its key: what it was held with
    stays readable."""
    assert runner.keeper is not None
    inputs, checks = runner.keeper.held_runs.pop(run_id, ([], None))
    return [settled_message(runner.runs_topic, run_id, by.kafka_partition), record_message(
        runner.runs_topic, run_id=run_id, stage=runner.name, partition=by.partition,
        status="released", attempt=1, max_attempts=runner.max_attempts,
        started_ms=int(started * 1000), ended_ms=int(time.time() * 1000), mode=by.mode,
        replay=0, inputs=inputs, outputs=[], error={"message": why}, trace_id=None,
        checks=checks, kafka_partition=by.kafka_partition if by.kafka_partition >= 0 else None)]
