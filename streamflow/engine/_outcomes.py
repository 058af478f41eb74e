"""A stage's runs: calling the stage, then recording each outcome.

A run succeeds (its outputs published, the ledger told), is retried (parked on the stage's retry
topic with its due time) or is dead-lettered; a barrier whose deadline passed fires, skips or
dead-letters its run. Every final status marks the run fired, so it never runs again.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import time
from contextlib import AbstractAsyncContextManager
from functools import partial
from typing import Any, Protocol

from opentelemetry.trace import SpanKind
from pydantic import BaseModel

from streamflow.gates.runtime import RunRecorder, gate_run
from streamflow.model import (
    H_ATTEMPT,
    H_PLANNED,
    H_RETRY_AT,
    H_TRACEPARENT,
    Arrival,
    Asset,
    DeadLetterKind,
    Message,
    Mode,
    OutMessage,
    PlannedRun,
    RunStatus,
    StageSpec,
    arrival_headers,
    error_info,
    output_id,
)
from streamflow.observability import (
    AttrValue,
    RecSpan,
    fail_span,
    trace_id_of,
    traceparent_of,
)
from streamflow.state import SETTLED, LedgerBatch, compact_inputs, record_message, run_entry
from streamflow.triggers import Refused, TriggerRuntime

from ._context import Ctx
from ._fired import FiredRuns
from ._redact import add_messages, add_output_error, add_plan

log = logging.getLogger("streamflow.stage")


class StageLike(RunRecorder, Protocol):
    """The stage runner as its runs see it (``_stage.StageRunner`` implements it): these
    functions are the run half of the runner, kept apart so each module stays one concern."""

    ctx: Ctx
    spec: StageSpec
    gate: TriggerRuntime | None
    fired: FiredRuns
    topics: list[str]
    out_topic: str
    out_asset_b: bytes
    out_version_b: bytes
    placed_all: bool
    retry_topic: str
    book: LedgerBatch

    def published(self) -> None: ...

    def plan_each(self, m: Message, arr: Arrival, record: BaseModel) -> PlannedRun: ...

    def scope(self, partition: int) -> AbstractAsyncContextManager[bool]: ...


async def execute(st: StageLike, plan: PlannedRun, attempt: int, m: Message | None,
                  out: list[OutMessage], spans: list[RecSpan | None],
                  proc: RecSpan | None) -> None:
    """Run ``plan``; then, if it released a gate's hold, the runs parked behind it."""
    for parked in await _run(st, plan, attempt, m, out, spans, proc):
        arr = Arrival.from_message(parked.key, parked.value, parked.headers)
        try:
            again = _unpark(st, parked, arr)
        except (ValueError, LookupError, Refused) as e:  # a contract grew stricter meanwhile
            add_messages([parked], st.by_asset)
            reason = (f"stage {st.name!r}: a run parked behind the hold on partition "
                      f"{plan.partition!r} cannot run: {type(e).__name__}: {e}")
            out.append(st.dead_letter(reason, parked, arr, None, spans, e))
            continue
        await execute(st, again, 1, parked, out, spans, None)


def _unpark(st: StageLike, parked: Message, arr: Arrival) -> PlannedRun:
    if any(k == H_PLANNED for k, _ in parked.headers):
        assert st.gate is not None, "a planned run parked at a stage without a trigger"
        again = st.gate.replan(parked.value, arr)
        again.kafka_partition = parked.partition
        again.settles = True
        return again
    asset = st.by_asset.get(arr.asset)
    if asset is None:
        raise LookupError(f"asset {arr.asset!r} is no input of this stage")
    again = st.plan_each(parked, arr, asset.contract.model_validate_json(parked.value))
    again.settles = True
    return again


async def _run(st: StageLike, plan: PlannedRun, attempt: int, m: Message | None,
               out: list[OutMessage], spans: list[RecSpan | None],
               proc: RecSpan | None) -> list[Message]:
    tr, spec = st.ctx.tracing, st.spec
    if plan.run_id in st.fired:
        st.ctx.counters.deduped += 1
        st.ctx.metrics.add(st.ctx.metrics.runs, (spec.name, "deduped"))
        return []
    add_plan(plan)
    run = None if not tr.enabled else tr.start_child(
        f"run {spec.name}", proc or plan.parent, SpanKind.INTERNAL,
        _run_attrs(st, plan, attempt), links=plan.links)
    spans.append(run)
    started = time.time()
    released: list[Message] = []
    if st.keeper is not None:
        go, released = await gate_run(st, plan, attempt, m, out, spans, run, started)
        if not go:
            return []
    st.ctx.counters.runs += 1
    if st.ctx.lineage is not None:
        lineage(st, plan, attempt, started, None)
    mt = st.ctx.metrics
    if m is not None and attempt == 1 and m.timestamp_ms > 0:
        mt.fire_latency.observe(st.name, max(0.0, started - m.timestamp_ms / 1000))
    try:
        with tr.run_context(run, plan.parent):
            outputs = outputs_of(await _call(st, plan.arg), spec.output)
    except Exception as e:  # user code: a failure retries or dead-letters, never crashes
        failed(st, e, plan, attempt, m, out, spans, run, started)
        return released
    _succeeded(st, outputs, plan, attempt, out, spans, run, started)
    return released


def _run_attrs(st: StageLike, plan: PlannedRun, attempt: int) -> dict[str, AttrValue]:
    attrs: dict[str, AttrValue] = {
        "streamflow.stage": st.spec.name, "streamflow.run_id": plan.run_id,
        "streamflow.partition": plan.partition, "streamflow.mode": plan.mode,
        "streamflow.attempt": attempt,
    }
    if plan.backfill:
        attrs["streamflow.backfill_id"] = plan.backfill
    return attrs


def failed(st: StageLike, e: Exception, plan: PlannedRun, attempt: int, m: Message | None,
            out: list[OutMessage], spans: list[RecSpan | None], run: RecSpan | None,
            started: float) -> None:
    """The attempt raised: retry it later, or dead-letter the run once retries are spent."""
    tr, spec, mt = st.ctx.tracing, st.spec, st.ctx.metrics
    add_output_error(e, spec.output)
    policy = spec.retry
    reason = f"stage {spec.name!r} failed in run {plan.run_id} (attempt {attempt} of " \
             f"{policy.attempts}): {type(e).__name__}: {e}"
    if run is None:  # not sampled: the failing run is exported all the same
        run = tr.start_failure(f"run {spec.name}", plan.parent, SpanKind.INTERNAL,
                               _run_attrs(st, plan, attempt),
                               start_time=int(started * 1e9))
        spans.append(run)
    fail_span(run, e, reason)
    if run is not None:
        run.add_event("attempt", {"streamflow.attempt": attempt,
                                  "streamflow.outcome": "failed"})
    mt.stage_duration.observe(spec.name, time.time() - started)
    mt.failed("stage", spec.name, reason, plan.run_id)
    if policy.should_retry(e, attempt):
        _retry(st, e, reason, plan, attempt, m, out, run, started)
    else:
        out.append(dead_letter_run(st, reason, plan, m, run, spans, e, attempt))
        out.append(ledger_record(st, plan, "dead-lettered", attempt, started, [], e))
        mt.add(mt.runs, (spec.name, "dead-lettered"))
        st.fire(plan)
        if st.ctx.lineage is not None:
            lineage(st, plan, attempt, time.time(), "dead-lettered", reason)


def _retry(st: StageLike, e: Exception, reason: str, plan: PlannedRun, attempt: int,
           m: Message | None, out: list[OutMessage], run: RecSpan | None,
           started: float) -> None:
    """Park the run on the retry topic with the due time of its next attempt."""
    spec, mt = st.spec, st.ctx.metrics
    st.ctx.counters.retried += 1
    mt.add(mt.retries, (spec.name,))
    mt.add(mt.runs, (spec.name, "retrying"))
    due = int((time.time() + spec.retry.delay_s(attempt)) * 1000)
    keep = [(k, v) for k, v in _run_headers(plan, m)
            if k not in (H_ATTEMPT, H_RETRY_AT, H_PLANNED, H_TRACEPARENT)]
    keep += [(H_ATTEMPT, str(attempt + 1).encode()), (H_RETRY_AT, str(due).encode())]
    if plan.planned:
        keep.append((H_PLANNED, b"1"))
    tp = traceparent_of(run, plan.parent)
    if tp is not None:
        keep.append((H_TRACEPARENT, tp))
    key = m.key if m is not None and not plan.planned else None
    out.append(OutMessage(st.retry_topic, plan.body(), key, keep,
                          partition_key=plan.partition.encode()))
    out.append(ledger_record(st, plan, "retrying", attempt, started, [], e))
    if st.ctx.lineage is not None:
        lineage(st, plan, attempt, time.time(), "retrying", reason)


def _succeeded(st: StageLike, outputs: list[BaseModel], plan: PlannedRun, attempt: int,
               out: list[OutMessage], spans: list[RecSpan | None], run: RecSpan | None,
               started: float) -> None:
    spec, mt = st.spec, st.ctx.metrics
    mt.stage_duration.observe(spec.name, time.time() - started)
    mt.add(mt.runs, (spec.name, "succeeded"))
    if run is not None:
        run.add_event("attempt", {"streamflow.attempt": attempt,
                                  "streamflow.outcome": "succeeded"})
    produced = _emit(st, outputs, plan, run, out, spans, started)
    if produced and spec.output is not None:
        mt.add(mt.arrivals_out, (spec.output.name,), len(produced))
    st.book.add(plan.kafka_partition, run_entry(
        plan.run_id, plan.partition, attempt, int(started * 1000), int(time.time() * 1000),
        compact_inputs(plan.inputs), produced, mode=plan.mode, replay=plan.replay,
        trace_id=trace_id_of(plan.parent), backfill=plan.backfill, checks=plan.checks),
        settle_at=settle_at(st, plan, attempt))
    st.fire(plan)
    if st.ctx.lineage is not None:
        lineage(st, plan, attempt, time.time(), "succeeded")


def settle_at(st: StageLike, plan: PlannedRun, attempt: int) -> int | None:
    """Where the run's open record on the ledger's compacted topic is, if it may have one."""
    at = st.fired.settle_at(plan.run_id)
    if at is None and (attempt > 1 or plan.replay > 0 or plan.settles):
        at = plan.kafka_partition
    return at


def lineage(st: StageLike, plan: PlannedRun, attempt: int, at: float, status: RunStatus | None,
            error: str | None = None) -> None:
    """START when ``status`` is None, else the attempt's end event."""
    assert st.ctx.lineage is not None
    kw: dict[str, Any] = dict(
        stage=st.name, run_id=plan.run_id, partition=plan.partition, attempt=attempt,
        mode=plan.mode, backfill=plan.backfill, inputs=[a.name for a in st.spec.inputs],
        output=st.spec.output.name if st.spec.output is not None else None,
        at_ms=int(at * 1000))
    if status is None:
        st.ctx.lineage.started(**kw)
    else:
        st.ctx.lineage.ended(**kw, status=status, error=error)


def dead_letter_run(st: StageLike, reason: str, plan: PlannedRun, m: Message | None,
                    parent: RecSpan | None, spans: list[RecSpan | None],
                    exc: BaseException | None, attempt: int,
                    kind: DeadLetterKind | None = None) -> OutMessage:
    """Dead-letter a run: its payload replays it (a record, or the planned inputs)."""
    arr = _plan_arrival(plan)
    hdrs = [(k, v) for k, v in _run_headers(plan, m)
            if k not in (H_ATTEMPT, H_RETRY_AT, H_PLANNED)]
    if plan.planned:
        hdrs.append((H_PLANNED, b"1"))
    # A planned run's message is whichever arrival fired it, maybe of another key: its
    # own partition number and key travel instead.
    where = m if m is not None and not plan.planned else Message(
        st.topics[0], plan.kafka_partition, -1, None, b"", [], 0)
    dead = Message(where.topic, where.partition, where.offset, where.key, plan.body(),
                   hdrs, where.timestamp_ms)
    return st.dead_letter(reason, dead, arr, parent, spans, exc, plan.run_id, attempt, kind)


def _plan_arrival(plan: PlannedRun) -> Arrival:
    first = plan.inputs[0] if plan.inputs else None
    return Arrival(first.arrival_id if first else plan.run_id,
                   first.asset if first else "", plan.partition, 1, 0, plan.run_id,
                   plan.mode, None, plan.body(), plan.parent, plan.replay, plan.backfill)


def _run_headers(plan: PlannedRun, m: Message | None) -> list[tuple[str, bytes]]:
    """What a retry or dead letter of the run carries: its input's headers, or for a
    planned run (whose message may be another key's) headers built from the run."""
    if m is not None and not plan.planned:
        return m.headers
    return _plan_arrival(plan).headers()


async def _call(st: StageLike, arg: Any) -> Any:
    fn, timeout = st.spec.fn, st.spec.retry.timeout_s
    if st.spec.is_async:
        result = fn(arg)
        assert inspect.isawaitable(result)
        return await (asyncio.wait_for(result, timeout) if timeout else result)
    if timeout is None:
        return fn(arg)
    return await asyncio.wait_for(asyncio.to_thread(fn, arg), timeout)


def _emit(st: StageLike, outputs: list[BaseModel], plan: PlannedRun, run: RecSpan | None,
          out: list[OutMessage], spans: list[RecSpan | None], started: float) -> list[str]:
    tr, out_asset = st.ctx.tracing, st.spec.output
    if out_asset is None:
        return []
    ids = []
    # Every input placed by its partition key on a topic of the output's partition count: an
    # output of the run's partition key goes where its inputs are.
    placed = ((plan.partition.encode(), plan.kafka_partition)
              if st.placed_all and plan.kafka_partition >= 0 else None)
    for i, rec in enumerate(outputs):
        send = None if run is None else tr.start_child(
            f"send {st.out_topic}", run, SpanKind.PRODUCER,
            partial(tr.send_attributes, st.out_topic, out_asset.key_bytes(rec)))
        spans.append(send)
        msg, oid = output_message(st, rec, i, plan.run_id, plan.mode, plan.backfill,
                                  traceparent_of(send, plan.parent), int(started * 1000),
                                  placed)
        out.append(msg)
        ids.append(oid)
    return ids


def output_message(st: StageLike, rec: BaseModel, i: int, run_id: str, mode: Mode,
                   backfill: str, traceparent: bytes | None, started_ms: int,
                   placed: tuple[bytes, int] | None = None) -> tuple[OutMessage, str]:
    """Output ``i`` of run ``run_id`` as an arrival of the stage's output asset, and its id.
    ``placed`` is the input's (partition key, partition number) when the output topic has as
    many partitions as the input's: an output with the same partition key goes to the same
    number without hashing it again (murmur2 is pure Python in aiokafka: 5 µs a record)."""
    asset = st.spec.output
    assert asset is not None
    oid = output_id(run_id, i)
    key, pkey = asset.key_and_partition(rec)
    hdrs = arrival_headers(oid.encode(), st.out_asset_b, st.out_version_b, pkey,
                           asset.event_time_ms(rec, started_ms), run_id, mode, traceparent,
                           backfill=backfill)
    partition = placed[1] if placed is not None and placed[0] == pkey else None
    return OutMessage(st.out_topic, rec.__pydantic_serializer__.to_json(rec), key, hdrs,
                      partition_key=pkey,
                      partition=partition), oid


def ledger_record(st: StageLike, plan: PlannedRun, status: RunStatus, attempt: int,
                  started: float, outputs: list[str], exc: BaseException | None) -> OutMessage:
    if status not in SETTLED:
        st.fired.opened(plan.run_id, plan.kafka_partition)
    return record_message(
        st.runs_topic, run_id=plan.run_id, stage=st.spec.name, partition=plan.partition,
        status=status, attempt=attempt, max_attempts=st.spec.retry.attempts,
        started_ms=int(started * 1000), ended_ms=int(time.time() * 1000), mode=plan.mode,
        replay=plan.replay, inputs=plan.inputs, outputs=outputs,
        error=error_info(exc) if exc is not None else None, trace_id=trace_id_of(plan.parent),
        checks=plan.checks,
        kafka_partition=plan.kafka_partition if plan.kafka_partition >= 0 else None,
        backfill=plan.backfill,
        output=st.spec.output.name if st.spec.output is not None else None)


_ONE = (BaseModel, dict)  # a tuple: ``BaseModel | dict`` would build a union on every call


def outputs_of(result: Any, asset: Asset[Any] | None) -> list[BaseModel]:
    """Normalise what a stage returned and hold it to the output contract."""
    if result is None:
        return []
    items = [result] if isinstance(result, _ONE) else list(result)
    if items and asset is None:
        raise TypeError("stage has no output asset but returned a value")
    out = []
    for item in items:
        assert asset is not None
        if isinstance(item, asset.contract):
            out.append(item)
        elif isinstance(item, BaseModel):
            out.append(asset.contract.model_validate(item.model_dump()))
        else:
            out.append(asset.contract.model_validate(item))
    return out
