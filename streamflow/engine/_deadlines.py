"""Deadlines: a barrier or window whose deadline passed gets its policy applied (fire, skip or
dead-letter), inside its input partition's transaction when exactly once."""

from __future__ import annotations

import logging
import time

from streamflow.model import Alert, DeadlinePolicy, OutMessage, PlannedRun, Redaction, redacting
from streamflow.observability import RecSpan, end_spans

from ._outcomes import StageLike, dead_letter_run, execute, ledger_record

log = logging.getLogger("streamflow.stage")


async def expire(st: StageLike) -> None:
    """Barriers whose deadline passed get their policy applied: fire, skip or fail."""
    assert st.gate is not None
    by_partition: dict[int, list[tuple[PlannedRun, DeadlinePolicy, OutMessage]]] = {}
    for plan, policy, state_msg in st.gate.expired():
        n = state_msg.partition if state_msg.partition is not None else -1
        by_partition.setdefault(n, []).append((plan, policy, state_msg))
    for n, due in by_partition.items():
        async with st.scope(n) as owned:
            if owned:
                with redacting(Redaction()):  # the runs it fires add their inputs (add_plan)
                    await _expire_partition(st, due)


async def _expire_partition(st: StageLike,
                            due: list[tuple[PlannedRun, DeadlinePolicy, OutMessage]]) -> None:
    assert st.gate is not None
    out: list[OutMessage] = []
    spans: list[RecSpan | None] = []
    mt = st.ctx.metrics
    for plan, policy, state_msg in due:
        out.append(state_msg)
        plan.kafka_partition = state_msg.partition if state_msg.partition is not None else -1
        mt.add(mt.barrier_deadlines, (st.name, policy))
        if policy == "fire":
            await execute(st, plan, 1, None, out, spans, None)
        elif policy == "skip":
            _deadline_alert(st, plan, "skipped")
            mt.add(mt.runs, (st.name, "skipped"))
            out.append(ledger_record(st, plan, "skipped", 1, time.time(), [], None))
            st.fire(plan)
        else:
            _deadline_alert(st, plan, "failed")
            reason = f"stage {st.name!r}: {st.gate.deadline_reason(plan)}"
            out.append(dead_letter_run(st, reason, plan, None, None, spans, None, 1))
            mt.add(mt.runs, (st.name, "dead-lettered"))
            out.append(ledger_record(st, plan, "dead-lettered", 1, time.time(), [], None))
            st.fire(plan)
    out.extend(st.book.drain())
    if out:
        await st.ctx.transport.publish(out)
        st.published()
        end_spans(reversed(spans))


def _deadline_alert(st: StageLike, plan: PlannedRun, what: str) -> None:
    assert st.gate is not None
    text = st.gate.alert_text(plan, what)
    if st.ctx.alerter is None:
        log.warning("ALERT stage %s: %s", st.name, text)
        return
    st.ctx.alerter.emit(Alert("deadline", st.ctx.pipeline, st.name, plan.partition,
                              plan.run_id, text, at_ms=int(time.time() * 1000)))
