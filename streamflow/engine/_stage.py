"""Running a stage: its trigger decides which runs to fire; each run is retried on its own lane
and recorded in the run ledger.

A failed attempt that may be retried is parked on the stage's retry topic with its due time and
everything needed to run it again, and its input is committed, so the main input keeps flowing
(other partitions are never held up by one run's backoff). A separate lane consumes the retry
topic and waits for each due time. Run ids derive from the stage, the partition and the input
arrival ids, so a run that already reached a final status is not run again when an arrival is
redelivered or duplicated.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from functools import partial
from typing import Any

from opentelemetry.trace import SpanKind
from pydantic import BaseModel, ValidationError

from streamflow.gates.runtime import Gatekeeper
from streamflow.model import (
    H_ATTEMPT,
    H_BACKFILL_STAGES,
    H_PLANNED,
    H_RETRY_AT,
    Arrival,
    Asset,
    DeadLetterKind,
    Message,
    OnEach,
    OutMessage,
    PlannedRun,
    RunInput,
    RunStatus,
    StageSpec,
    Window,
    describe_validation,
    header_int,
    lane_topic,
    redacting,
    replay_topic,
    run_id_of,
    runs_topic,
    sensitive_fields,
    stage_group,
    too_large,
)
from streamflow.observability import Metrics, RecSpan, Tracing, end_spans, fail_span
from streamflow.state import LedgerBatch, StateStore
from streamflow.transports import Subscription
from streamflow.triggers import BarrierGate, PartitionState, Refused, TriggerRuntime, WindowGate

from . import _outcomes
from ._consumer import _Consumer
from ._context import Ctx
from ._deadlines import expire
from ._each import handle_each, lean
from ._fired import FiredRuns, RecentRuns
from ._lanes import LanePolling
from ._redact import batch_redaction, names_of
from ._triggered import handle_triggered, lean_triggered

log = logging.getLogger("streamflow.stage")


class StageRunner(_Consumer):
    """Consumes a stage's inputs (``retry_lane=False``) or its retry topic (``True``)."""

    def __init__(self, spec: StageSpec, ctx: Ctx, fired: RecentRuns, retry_lane: bool = False,
                 keeper: Gatekeeper | None = None):
        super().__init__(ctx)
        self.keeper = keeper  # the stage's quality gate, shared by both lanes
        self.spec = spec
        self.name = spec.name
        self.retry_lane = retry_lane
        self.fired = FiredRuns(fired, ctx.transport, runs_topic(ctx.namespace), spec.name)
        self.retry_topic = replay_topic(ctx.namespace, spec.name)
        self.runs_topic = runs_topic(ctx.namespace)
        base = stage_group(ctx.namespace, spec.name)
        self.group = base + ".retry" if retry_lane else base
        self.topics = [self.retry_topic] if retry_lane else [ctx.topic(a) for a in spec.inputs]
        self.input_topic = self.topics[0]
        self.by_asset: dict[str, Asset[Any]] = {a.name: a for a in spec.inputs}
        self.by_topic: dict[str, Asset[Any]] = {ctx.topic(a): a for a in spec.inputs}
        self.sensitive = names_of(spec.inputs)
        # The backfill lane: replayed arrivals, read in small slices once live input is done.
        self.live_topics = frozenset(self.topics)
        self.lane_topics = frozenset() if retry_lane else frozenset(
            lane_topic(ctx.namespace, a.name) for a in spec.inputs)
        if self.lane_topics:
            self.topics += [lane_topic(ctx.namespace, a.name) for a in spec.inputs]
            self.by_topic.update({lane_topic(ctx.namespace, a.name): a for a in spec.inputs})
        self._lanes = LanePolling(ctx, self.live_topics, self.lane_topics)
        self.out_topic = ctx.topic(spec.output) if spec.output is not None else ""
        out = spec.output
        self.out_asset_b = out.name.encode() if out is not None else b""
        self.out_version_b = str(out.version).encode() if out is not None else b""
        self.placed_topics: frozenset[str] = frozenset()  # set at open
        self.placed_all = False
        self.book = LedgerBatch(self.runs_topic, spec.name, spec.retry.attempts,
                                out.name if out is not None else None)
        self.gate: TriggerRuntime | None = None
        if isinstance(spec.trigger, Window):
            self.gate = WindowGate(spec, ctx.transport, ctx.namespace, self.by_asset)
        elif not isinstance(spec.trigger, OnEach):
            self.gate = BarrierGate(spec, ctx.transport, ctx.namespace, self.by_asset)
        if self.gate is not None and keeper is not None:
            self.gate.held = keeper.held
        if self.gate is not None and not retry_lane:  # the input lane is its only writer
            self.gate.store.checkpoints = ctx.checkpoints
        self._lean = not retry_lane and lean(self)
        self._lean_triggered = not retry_lane and lean_triggered(self)

    @property
    def max_attempts(self) -> int:
        return self.spec.retry.attempts

    @property
    def metrics(self) -> Metrics:
        return self.ctx.metrics

    @property
    def tracing(self) -> Tracing:
        return self.ctx.tracing

    def _stores(self) -> list[StateStore[Any]]:
        return [] if self.retry_lane else [
            g.store for g in (self.gate, self.keeper) if g is not None]

    async def open(self) -> None:
        stores = self._stores()

        async def assign(partitions: set[int]) -> None:
            # Loads start here and are awaited before the partition's first record is handled,
            # not here: aiokafka heartbeats only once this callback has returned.
            for st in stores:
                st.prefetch(partitions)
            self.fired.assigned(partitions)

        async def revoke(partitions: set[int]) -> None:
            await self.handing_over(partitions)
            for st in stores:
                await st.forget(partitions)
            self.fired.revoked(partitions)

        self.sub = await self.ctx.transport.subscribe(
            self.group, self.topics, on_assign=assign, on_revoke=revoke)
        self.placed_topics = await self._placed_topics()
        self.placed_all = bool(self.placed_topics) and self.placed_topics == self.live_topics

    async def _placed_topics(self) -> frozenset[str]:
        """Live inputs whose partition count is the output topic's: an output with its
        input's partition key goes to the input's partition number (``output_message``)."""
        if not self.out_topic or self.retry_lane:
            return frozenset()
        t = self.ctx.transport
        n = await t.partition_count(self.out_topic)
        return frozenset([x for x in self.live_topics if await t.partition_count(x) == n])

    def fire(self, plan: PlannedRun) -> None:
        """The run reached a final status: a redelivered or duplicated input skips it."""
        self.fired.add(plan.run_id, plan.kafka_partition,
                       self.sub is not None and self.sub.exactly_once)

    def committed(self) -> None:
        self.fired.committed()

    async def checkpoint(self) -> None:
        if self.gate is not None and not self.retry_lane and self.sub is not None:
            await self.gate.store.checkpoint(set(self.sub.assigned))

    async def rewound(self) -> None:
        """The open transaction was discarded: so are its states and its fired runs."""
        for st in self._stores():
            await st.forget_all()
        self.fired.rewound()

    async def poll(self, sub: Subscription) -> tuple[list[Message], bool]:
        """Live input first, then a slice of the backfill lane (see ``LanePolling``)."""
        batch = self.ctx.poll_batch
        if not self.lane_topics:
            msgs = await sub.poll(batch, timeout=0.2)
            return msgs, len(msgs) >= batch
        return await self._lanes.poll(sub)

    def busy(self) -> bool:
        return self.gate is not None and not self.retry_lane and self.gate.any_expired()

    def restoring(self) -> bool:
        return self.gate is not None and not self.retry_lane and self.gate.store.restoring()

    def next_deadline_s(self) -> float | None:
        return None if self.gate is None or self.retry_lane else self.gate.next_deadline_s()

    def has_gate(self) -> bool:
        return self.gate is not None and not self.retry_lane

    def open_states(self) -> list[PartitionState]:
        if self.gate is None or self.retry_lane:
            return []
        return [st for st in self.gate.store.states.values() if st.fired is None and st.slots]

    async def idle(self) -> None:
        """Between polls: a barrier whose deadline passed gets its policy applied."""
        if self.gate is None or self.retry_lane or not self.gate.any_expired():
            return
        async with self._locked():
            await expire(self)

    def published(self) -> None:
        if self.keeper is not None:
            self.keeper.published()

    def _locked(self) -> contextlib.AbstractAsyncContextManager[Any]:
        """A gated stage's two lanes decide and publish one at a time (they share its holds)."""
        return self.keeper.lock if self.keeper is not None else contextlib.nullcontext()

    async def handle(self, msgs: list[Message]) -> list[Message]:
        with redacting(batch_redaction(msgs, self.by_asset, self.by_topic, self.spec.output)):
            return await self._handle(msgs)

    async def _handle(self, msgs: list[Message]) -> list[Message]:
        if self.fired.loading:
            await self.fired.loaded()
        if not self.retry_lane:  # one lane rotates: a lean batch's sets stay the current ones
            self.fired.ids.tick()
        if self.retry_lane and self.keeper is not None:
            return await self._handle_each(msgs)
        out: list[OutMessage] = []
        spans: list[RecSpan | None] = []
        done: list[Message] = []
        async with self._locked():
            if self._lean:
                await handle_each(self, msgs, out, spans)
                done = msgs
            elif self._lean_triggered:
                await handle_triggered(self, msgs, out, spans)
                done = msgs
            else:
                for m in msgs:
                    if self.retry_lane and not await self._wait_until_due(m):
                        break  # stopping: the rest stays uncommitted, comes back next run
                    await self.process_one(m, out, spans)
                    done.append(m)
            out.extend(self.book.drain())
            if self.keeper is None:
                await self.publish(out)
            else:  # a gate's holds are decided on what is durable
                await self.ctx.transport.publish(out)
                self.published()
        end_spans(reversed(spans))
        return done

    async def _handle_each(self, msgs: list[Message]) -> list[Message]:
        """The retry lane of a gated stage: the lock is taken per message, after its due
        time, so waiting never holds up the input lane."""
        done: list[Message] = []
        for m in msgs:
            if not await self._wait_until_due(m):
                break
            out: list[OutMessage] = []
            spans: list[RecSpan | None] = []
            async with self._locked():
                await self.process_one(m, out, spans)
                out.extend(self.book.drain())
                await self.ctx.transport.publish(out)
                self.published()
            end_spans(reversed(spans))
            done.append(m)
        return done

    async def wait_ready(self, msgs: list[Message]) -> bool:
        """The retry lane waits for the last due time of a partition's batch before taking
        the partition, so a rebalance never waits for a backoff."""
        if not self.retry_lane:
            return True
        return await self._wait_until_due(max(msgs, key=_due_ms))

    async def _wait_until_due(self, m: Message) -> bool:
        delay = _due_ms(m) / 1000 - time.time()
        if delay <= 0:
            return True
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stop.wait(), delay)
        return not self._stop.is_set()

    async def process_one(self, m: Message, out: list[OutMessage],
                          spans: list[RecSpan | None]) -> None:
        """One record, whatever it is: the general path (``_each`` takes the common case)."""
        tr = self.ctx.tracing
        h = dict(m.headers)
        arr = Arrival.from_headers(m.key, m.value, h)
        proc = None if not tr.enabled else tr.start_child(
            f"process {m.topic}", arr.traceparent, SpanKind.CONSUMER,
            partial(tr.process_attributes, m.topic, m.partition, m.offset, self.group, m.key))
        spans.append(proc)
        attempt = header_int(h.get(H_ATTEMPT), 1)
        if H_PLANNED in h:
            try:
                plan = self._replan(m, arr)
            except Refused as e:
                self.reject(f"{_where(m)}: stage {self.name!r}: {e}", m, arr, proc, out, spans)
                return
            plan.kafka_partition = m.partition  # by its partition key, as the input's
            await _outcomes.execute(self, plan, attempt, m, out, spans, proc)
            return
        if m.topic in self.lane_topics and not self._targeted(m):
            return  # a backfill of another stage reading the same asset
        asset = self.by_asset.get(arr.asset) if self.retry_lane else self.by_topic.get(m.topic)
        record = self._checked(m, arr, asset)
        if isinstance(record, str):
            self.reject(record, m, arr, proc, out, spans)
            return
        if self.gate is not None and not self.retry_lane:
            if not self.gate.store.loaded(m.partition):
                await self.gate.ensure_restored(m.partition)
            keeper = self.keeper  # the trigger asks whether the key is held
            if keeper is not None and not keeper.store.loaded(m.partition):
                await keeper.store.ensure_restored(m.partition)
            assert asset is not None
            try:
                plans, state_msgs = self.gate.offer(m, arr, asset, record)
            except Refused as e:
                self.reject(str(e), m, arr, proc, out, spans)
                return
            out.extend(state_msgs)
        else:
            plans = [self.plan_each(m, arr, record)]
        for plan in plans:
            if plan.kafka_partition < 0:
                plan.kafka_partition = m.partition
            await _outcomes.execute(self, plan, attempt, m, out, spans, proc)

    def _checked(self, m: Message, arr: Arrival, asset: Asset[Any] | None) -> BaseModel | str:
        """The record under its contract, or why it must be dead-lettered."""
        if len(m.value) > self.ctx.max_record_bytes:
            return f"{_where(m)}: {too_large(len(m.value), self.ctx.max_record_bytes)}"
        if not self.retry_lane:
            mt = self.ctx.metrics
            mt.add(mt.arrivals_in, (asset.name if asset is not None else arr.asset, self.name))
        if asset is None:
            return f"{_where(m)}: asset {arr.asset!r} is no input of stage {self.name!r}"
        try:
            record: BaseModel = asset.contract.model_validate_json(m.value)
        except ValidationError as e:
            if not m.value:
                return f"{_where(m)}: tombstone (a null value): there is no record to process"
            why = describe_validation(e, asset.contract.__name__, asset.version,
                                      sensitive_fields(asset.contract))
            return f"{_where(m)}: {why}"
        return record

    def reject(self, reason: str, m: Message, arr: Arrival, proc: RecSpan | None,
                out: list[OutMessage], spans: list[RecSpan | None]) -> None:
        fail_span(proc, None, reason)
        out.append(self.dead_letter(reason, m, arr, proc, spans, None))

    def _targeted(self, m: Message) -> bool:
        stages = next((v for k, v in m.headers if k == H_BACKFILL_STAGES), None)
        return stages is None or self.name in stages.decode("utf-8", "replace").split(",")

    def plan_each(self, m: Message, arr: Arrival, record: BaseModel) -> PlannedRun:
        inputs = [RunInput(arr.asset, arr.partition, arr.version, arr.arrival_id)]
        return PlannedRun(run_id_of(self.name, arr), arr.partition, record, inputs,
                          arr.traceparent, mode=arr.mode, replay=arr.replay, payload=m.value,
                          kafka_partition=m.partition, backfill=arr.backfill)

    def _replan(self, m: Message, arr: Arrival) -> PlannedRun:
        if self.gate is None:
            raise Refused("a planned run reached a stage without a trigger")
        return self.gate.replan(m.value, arr)

    def ledger_record(self, plan: PlannedRun, status: RunStatus, attempt: int, started: float,
                      outputs: list[str], exc: BaseException | None) -> OutMessage:
        return _outcomes.ledger_record(self, plan, status, attempt, started, outputs, exc)

    def dead_letter_run(self, reason: str, plan: PlannedRun, m: Message | None,
                        parent: RecSpan | None, spans: list[RecSpan | None],
                        exc: BaseException | None, attempt: int,
                        kind: DeadLetterKind | None = None) -> OutMessage:
        """Dead-letter a run: its payload replays it (a record, or the planned inputs)."""
        return _outcomes.dead_letter_run(self, reason, plan, m, parent, spans, exc, attempt,
                                         kind)


def _due_ms(m: Message) -> int:
    """When a retry may run (0: now); bad metadata from a foreign producer means now."""
    return header_int(next((v for k, v in m.headers if k == H_RETRY_AT), None), 0)



def _where(m: Message) -> str:
    return f"{m.topic}@{m.partition}:{m.offset}"
