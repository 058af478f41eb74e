"""A barrier or window stage's input lane, a polled batch at a time: ``_each``'s lean path for
stages with a trigger.

The trigger decides exactly as on the general path (``StageRunner.process_one``): the same
``offer``, the same changelog messages, the same planned runs with the same ids. What differs
is the bookkeeping around each fired run: metrics counted per batch, outputs built with what
the stage and the run share made once, no span or attribute work for an unsampled record.
A record the trigger refuses, one that is unusual (a planned or retried run, a replay, a
rerun, a backfill lane record, a sampled trace, a bad record) or a run that fails goes the
general way.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable
from typing import Any, Protocol, cast

from streamflow.model import Arrival, Message, OutMessage, PlannedRun
from streamflow.observability import RecSpan
from streamflow.state import compact_inputs
from streamflow.triggers import Refused, TriggerRuntime

from . import _outcomes
from ._each import EachStage, _Batch
from ._redact import add_plan


class TriggeredStage(EachStage, Protocol):
    gate: TriggerRuntime | None
    placed_all: bool

    def reject(self, reason: str, m: Message, arr: Arrival, proc: RecSpan | None,
               out: list[OutMessage], spans: list[RecSpan | None]) -> None: ...

    def fire(self, plan: PlannedRun) -> None: ...


def lean_triggered(st: TriggeredStage) -> bool:
    """The input lane of a barrier or window stage without a gate's checks, per-run lineage
    events or a timeout."""
    return (st.gate is not None and st.keeper is None and st.ctx.lineage is None
            and st.spec.retry.timeout_s is None)


async def handle_triggered(st: TriggeredStage, msgs: list[Message], out: list[OutMessage],
                           spans: list[RecSpan | None]) -> None:
    gate = st.gate
    assert gate is not None
    b = _Batch(st, out)
    for m in msgs:
        accepted = b.accept(m)
        if accepted is None:
            await st.process_one(m, out, spans)
            continue
        h, record = accepted
        arr = Arrival.from_headers(m.key, m.value, h)
        asset = st.by_topic[m.topic]
        if not gate.store.loaded(m.partition):
            await gate.ensure_restored(m.partition)
        try:
            plans, state_msgs = gate.offer(m, arr, asset, record)
        except Refused as e:
            st.reject(str(e), m, arr, None, out, spans)
            continue
        out.extend(state_msgs)
        for plan in plans:
            if plan.kafka_partition < 0:
                plan.kafka_partition = m.partition
            await _run(st, b, plan, m, spans)
    b.tally.flush(st)


async def _run(st: TriggeredStage, b: _Batch, plan: PlannedRun, m: Message,
               spans: list[RecSpan | None]) -> None:
    """``_outcomes.execute`` for a run of this batch, without a gate or a span."""
    if plan.run_id in st.fired:
        b.tally.deduped += 1
        return
    add_plan(plan)
    spec, tr = st.spec, st.ctx.tracing
    started = time.time()
    if m.timestamp_ms > 0:
        b.tally.fire_latency.append(max(0.0, started - m.timestamp_ms / 1000))
    try:
        if b.traced:  # user code logs under the run's trace id
            with tr.run_context(None, plan.parent):
                result = spec.fn(plan.arg)
        else:
            result = spec.fn(plan.arg)
        if spec.is_async:
            result = await cast(Awaitable[Any], result)
        outputs = _outcomes.outputs_of(result, spec.output)
    except Exception as e:  # user code: retried or dead-lettered, as on the general path
        st.ctx.counters.runs += 1
        _outcomes.failed(st, e, plan, 1, m, b.out, spans, None, started)
        return
    pkey_in = (plan.partition.encode() if st.placed_all and plan.kafka_partition >= 0
               else None)
    b.record_run(plan.run_id, plan.partition, plan.kafka_partition, outputs, started,
                 plan.mode, plan.parent, plan.backfill, compact_inputs(plan.inputs), pkey_in,
                 settle_at=_outcomes.settle_at(st, plan, 1))
    st.fire(plan)
