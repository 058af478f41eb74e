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
import inspect
import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from opentelemetry.trace import SpanKind
from pydantic import BaseModel, ValidationError

from ._alerts import Alert
from ._barrier import BarrierGate, Late
from ._deadletter import describe_validation, error_info
from ._gate_lane import gate_run
from ._gating import Gatekeeper
from ._ledger import RunInput, RunStatus, fired_of, fold_raw, record_message, runs_topic
from ._model import (
    H_ATTEMPT,
    H_BACKFILL_STAGES,
    H_PLANNED,
    H_RETRY_AT,
    H_TRACEPARENT,
    Arrival,
    Asset,
    _int,
    lane_topic,
    stable_id,
)
from ._pipeline import StageSpec
from ._runners import Ctx, _Consumer, _end, _fail, replay_topic
from ._spans import AttrValue, RecSpan
from ._telemetry import traceparent_of
from ._triggers import OnEach, PartitionState, Window
from ._window import WindowGate
from .transports import Message, OutMessage, Subscription

log = logging.getLogger("streamflow.stage")


def run_id_of(stage: str, arr: Arrival) -> str:
    """Deterministic: a redelivered arrival maps to the same run (a backfill overlapping live
    data too); a replay, or a backfill that reprocesses, makes a new one."""
    if arr.rerun:
        return stable_id(stage, arr.partition, arr.arrival_id, f"rerun-{arr.rerun}")
    if arr.replay:
        return stable_id(stage, arr.partition, arr.arrival_id, f"replay-{arr.replay}")
    return stable_id(stage, arr.partition, arr.arrival_id)


@dataclass(slots=True)
class PlannedRun:
    """One firing: what the stage function is called with, and what to record about it."""

    run_id: str
    partition: str
    arg: Any
    inputs: list[RunInput]
    parent: bytes | None
    links: list[bytes] = field(default_factory=list)
    mode: str = "live"
    replay: int = 0
    payload: bytes = b""
    """What a retry or dead letter carries to run it again: the record, or the planned inputs."""
    planned: bool = False
    kafka_partition: int = -1
    """The input partition number it came from: where a gate's hold on it is kept."""
    checks: list[dict[str, Any]] | None = None
    backfill: str = ""


class StageRunner(_Consumer):
    """Consumes a stage's inputs (``retry_lane=False``) or its retry topic (``True``)."""

    def __init__(self, spec: StageSpec, ctx: Ctx, fired: set[str], retry_lane: bool = False,
                 keeper: Gatekeeper | None = None):
        super().__init__(ctx)
        self.keeper = keeper  # the stage's quality gate, shared by both lanes
        self.spec = spec
        self.name = spec.name
        self.retry_lane = retry_lane
        self.fired = fired  # run ids with a final status, shared by both lanes
        self.retry_topic = replay_topic(ctx.namespace, spec.name)
        self.runs_topic = runs_topic(ctx.namespace)
        base = f"{ctx.namespace}.stage.{spec.name}"
        self.group = base + ".retry" if retry_lane else base
        self.topics = [self.retry_topic] if retry_lane else [ctx.topic(a) for a in spec.inputs]
        self.by_asset: dict[str, Asset[Any]] = {a.name: a for a in spec.inputs}
        self.by_topic: dict[str, Asset[Any]] = {ctx.topic(a): a for a in spec.inputs}
        # The backfill lane: replayed arrivals, read in small slices once live input is done.
        self.live_topics = frozenset(self.topics)
        self.lane_topics = frozenset() if retry_lane else frozenset(
            lane_topic(ctx.namespace, a.name) for a in spec.inputs)
        if self.lane_topics:
            self.topics += [lane_topic(ctx.namespace, a.name) for a in spec.inputs]
            self.by_topic.update({lane_topic(ctx.namespace, a.name): a for a in spec.inputs})
        self._lane_busy_at = -10.0  # when the lane last had records
        self._lane_more = False  # the last look at the lane found records
        self._live_at = 0.0  # when live input last had records
        self.out_topic = ctx.topic(spec.output) if spec.output is not None else ""
        self.gate: BarrierGate | WindowGate | None = None
        # Run ids fired in a transaction not committed yet, per input partition number.
        self._uncommitted: dict[int, list[str]] = {}
        self._fresh: set[int] | None = None  # partitions whose fired runs are known
        # Fired runs of partitions moved here, being loaded: (partitions, load).
        self._loading: list[tuple[set[int], asyncio.Future[None]]] = []
        if isinstance(spec.trigger, Window):
            self.gate = WindowGate(spec, ctx, self.by_asset)
        elif not isinstance(spec.trigger, OnEach):
            self.gate = BarrierGate(spec, ctx, self.by_asset)
        if self.gate is not None and keeper is not None:
            self.gate.held = keeper.held

    def _stores(self) -> list[Any]:
        return [] if self.retry_lane else [
            g.store for g in (self.gate, self.keeper) if g is not None]

    async def open(self) -> None:
        stores = self._stores()

        async def assign(partitions: set[int]) -> None:
            # Loads start here and are awaited before the partition's first record is handled,
            # not here: aiokafka heartbeats only once this callback has returned.
            for st in stores:
                st.prefetch(partitions)
            if self._fresh is None:  # the first assignment: the worker read the whole ledger
                self._fresh = set(partitions)
            elif partitions - self._fresh:  # moved here: what its previous owner already ran
                moved = partitions - self._fresh
                self._loading.append((moved, asyncio.ensure_future(self._load_fired(moved))))
                self._fresh |= partitions

        async def revoke(partitions: set[int]) -> None:
            for st in stores:
                await st.forget(partitions)
            # Its last commit may have failed (the broker away during the rebalance).
            self._unfire(partitions)
            if self._fresh is not None:
                self._fresh -= partitions

        self.sub = await self.ctx.transport.subscribe(
            self.group, self.topics, on_assign=assign, on_revoke=revoke)

    def fire(self, plan: PlannedRun) -> None:
        """The run reached a final status: a redelivered or duplicated input skips it."""
        self.fired.add(plan.run_id)
        if self.sub is not None and self.sub.exactly_once:
            self._uncommitted.setdefault(plan.kafka_partition, []).append(plan.run_id)

    def committed(self) -> None:
        self._uncommitted.clear()

    def _unfire(self, partitions: set[int] | None = None) -> None:
        """Fired runs whose transaction may be lost are forgotten; a partition that comes
        back reloads what did commit from the ledger."""
        for p in list(self._uncommitted) if partitions is None else partitions:
            self.fired.difference_update(self._uncommitted.pop(p, ()))

    async def rewound(self) -> None:
        """The open transaction was discarded: so are its states and its fired runs."""
        for st in self._stores():
            await st.forget(set(st._restores))
        self._unfire()
        self._fresh = set()

    async def _load_fired(self, partitions: set[int]) -> None:
        """Runs that reached a final status on these partitions, from the ledger: a partition
        that moved here brings what its previous owner already ran."""
        msgs = await self.ctx.transport.read_topic(self.runs_topic, partitions)
        self.fired.update(fired_of(fold_raw(msgs), self.name))

    async def poll(self, sub: Subscription) -> tuple[list[Message], bool]:
        """Live input first: the backfill lane gets a slice of ``backfill_batch`` records only
        when the live poll came back short of a full batch, so a live record waits behind at
        most one slice however large the backfill (and a backfill runs as fast as live
        leaves room for)."""
        batch = self.ctx.poll_batch
        if not self.lane_topics:
            msgs = await sub.poll(batch, timeout=0.2)
            return msgs, len(msgs) >= batch
        now = time.monotonic()
        if now - self._lane_busy_at > 2.0:
            # No backfill lately: one poll of everything, as without a lane. The first lane
            # records switch to the split reads below until the lane has been dry for 2 s.
            msgs = await sub.poll(batch, timeout=0.2)
            if any(m.topic in self.lane_topics for m in msgs):
                self._lane_busy_at = now
            return msgs, len(msgs) >= batch
        if self._lane_more:
            # Live is only peeked at while the lane flows; the client's fetches and sends
            # still get their turn on the event loop between two slices.
            await asyncio.sleep(0)
            wait = 0.0
        else:  # the lane just ran dry: live is waited for briefly (the lane's next fetch may
            # be on its way)
            wait = 0.02 if now - self._lane_busy_at < 1.0 else 0.2
        live = await sub.poll(batch, timeout=wait, topics=self.live_topics)
        if len(live) >= batch:
            return live, True
        if live:
            self._live_at = now
        # Small slices while live records keep coming; with live quiet for a second, the
        # backfill takes whole batches.
        size = self.ctx.backfill_batch if live or now - self._live_at < 1.0 else batch
        lane = await sub.poll(size, timeout=0.0, topics=self.lane_topics, append=True)
        self._lane_more = bool(lane)
        if lane:
            self._lane_busy_at = time.monotonic()
        return live + lane, bool(lane)

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
            await self._expire()

    async def _expire(self) -> None:
        assert self.gate is not None
        by_partition: dict[int, list[tuple[PlannedRun, str, OutMessage]]] = {}
        for plan, policy, state_msg in self.gate.expired():
            n = state_msg.partition if state_msg.partition is not None else -1
            by_partition.setdefault(n, []).append((plan, policy, state_msg))
        for n, due in by_partition.items():
            async with self.scope(n) as owned:
                if owned:
                    await self._expire_partition(due)

    async def _expire_partition(self, due: list[tuple[PlannedRun, str, OutMessage]]) -> None:
        assert self.gate is not None
        out: list[OutMessage] = []
        spans: list[RecSpan | None] = []
        mt = self.ctx.metrics
        for plan, policy, state_msg in due:
            out.append(state_msg)
            plan.kafka_partition = state_msg.partition if state_msg.partition is not None else -1
            mt.add(mt.barrier_deadlines, (self.name, policy))
            if policy == "fire":
                await self._execute(plan, 1, None, out, spans, None)
            elif policy == "skip":
                self._deadline_alert(plan, "skipped")
                mt.add(mt.runs, (self.name, "skipped"))
                out.append(self._ledger(plan, "skipped", 1, time.time(), [], None))
                self.fire(plan)
            else:
                self._deadline_alert(plan, "failed")
                reason = f"stage {self.name!r}: {self.gate.deadline_reason(plan)}"
                out.append(self._dead_plan(reason, plan, None, None, spans, None, 1))
                mt.add(mt.runs, (self.name, "dead-lettered"))
                out.append(self._ledger(plan, "dead-lettered", 1, time.time(), [], None))
                self.fire(plan)
        if out:
            await self.ctx.transport.publish(out)
            self._published()
            _end(reversed(spans))

    def _published(self) -> None:
        if self.keeper is not None:
            self.keeper.published()

    def _deadline_alert(self, plan: PlannedRun, what: str) -> None:
        assert self.gate is not None
        text = self.gate.alert_text(plan, what)
        if self.ctx.alerter is None:
            log.warning("ALERT stage %s: %s", self.name, text)
            return
        self.ctx.alerter.emit(Alert("deadline", self.ctx.pipeline, self.name, plan.partition,
                                    plan.run_id, text, at_ms=int(time.time() * 1000)))

    def _locked(self) -> contextlib.AbstractAsyncContextManager[Any]:
        """A gated stage's two lanes decide and publish one at a time (they share its holds)."""
        return self.keeper.lock if self.keeper is not None else contextlib.nullcontext()

    async def _fired_loaded(self) -> None:
        """Runs a partition's previous owner fired are known before its records run."""
        while self._loading:
            partitions, task = self._loading[0]
            try:
                await task
            except Exception:  # the ledger could not be read (broker gone): read it again
                log.warning("stage %s: loading fired runs failed; retrying", self.name,
                            exc_info=True)
                await asyncio.sleep(0.5)
                self._loading[0] = (partitions,
                                    asyncio.ensure_future(self._load_fired(partitions)))
                continue
            self._loading.pop(0)

    async def handle(self, msgs: list[Message]) -> list[Message]:
        if self._loading:
            await self._fired_loaded()
        if self.retry_lane and self.keeper is not None:
            return await self._handle_each(msgs)
        out: list[OutMessage] = []
        spans: list[RecSpan | None] = []
        done: list[Message] = []
        async with self._locked():
            for m in msgs:
                if self.retry_lane and not await self._wait_until_due(m):
                    break  # stopping: the rest stays uncommitted and comes back next run
                await self._process(m, out, spans)
                done.append(m)
            if self.keeper is None:
                await self.publish(out)
            else:  # a gate's holds are decided on what is durable
                await self.ctx.transport.publish(out)
                self._published()
        _end(reversed(spans))
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
                await self._process(m, out, spans)
                await self.ctx.transport.publish(out)
                self._published()
            _end(reversed(spans))
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

    async def _process(self, m: Message, out: list[OutMessage],
                       spans: list[RecSpan | None]) -> None:
        tr = self.ctx.tracing
        arr = Arrival.from_message(m.key, m.value, m.headers)
        proc = tr.start_child(
            f"process {m.topic}", arr.traceparent, SpanKind.CONSUMER,
            partial(tr.process_attributes, m.topic, m.partition, m.offset, self.group, m.key))
        spans.append(proc)
        attempt = next((int(v) for k, v in m.headers if k == H_ATTEMPT), 1)
        if any(k == H_PLANNED for k, _ in m.headers):
            plan = self._replan(m, arr)
            if plan is not None:
                plan.kafka_partition = m.partition  # by its partition key, as the input's
                await self._execute(plan, attempt, m, out, spans, proc)
            return
        if m.topic in self.lane_topics and not self._targeted(m):
            return  # a backfill of another stage reading the same asset
        asset = self.by_asset.get(arr.asset) if self.retry_lane else self.by_topic.get(m.topic)
        if len(m.value) > self.ctx.max_record_bytes:
            reason = (f"{m.topic}@{m.partition}:{m.offset}: record of {len(m.value)} bytes "
                      f"exceeds max_record_bytes ({self.ctx.max_record_bytes}); raise "
                      "STREAMFLOW_MAX_RECORD_BYTES if such records are expected")
            _fail(proc, None, reason)
            out.append(self._dead(reason, m, arr, proc, spans, None))
            return
        if not self.retry_lane:
            mt = self.ctx.metrics
            mt.add(mt.arrivals_in, (asset.name if asset is not None else arr.asset, self.name))
        if asset is None:
            reason = f"{m.topic}@{m.partition}:{m.offset}: asset {arr.asset!r} is no input of " \
                     f"stage {self.name!r}"
            _fail(proc, None, reason)
            out.append(self._dead(reason, m, arr, proc, spans, None))
            return
        try:
            record = asset.contract.model_validate_json(m.value)
        except ValidationError as e:
            reason = (f"{m.topic}@{m.partition}:{m.offset}: "
                      f"{describe_validation(e, asset.contract.__name__, asset.version)}")
            _fail(proc, None, reason)
            out.append(self._dead(reason, m, arr, proc, spans, None))
            return
        if self.gate is not None and not self.retry_lane:
            await self.gate.ensure_restored(m.partition)
            keeper = self.keeper  # the trigger asks whether the key is held
            if keeper is not None and not keeper.store.loaded(m.partition):
                await keeper.store.ensure_restored(m.partition)
            try:
                plans, state_msgs = self.gate.offer(m, arr, asset)
            except Late as e:
                _fail(proc, None, str(e))
                out.append(self._dead(str(e), m, arr, proc, spans, None))
                return
            out.extend(state_msgs)
        else:
            plans = [self._plan_each(m, arr, record)]
        for plan in plans:
            if plan.kafka_partition < 0:
                plan.kafka_partition = m.partition
            await self._execute(plan, attempt, m, out, spans, proc)

    def _targeted(self, m: Message) -> bool:
        stages = next((v for k, v in m.headers if k == H_BACKFILL_STAGES), None)
        return stages is None or self.name in stages.decode("utf-8", "replace").split(",")

    def _plan_each(self, m: Message, arr: Arrival, record: BaseModel) -> PlannedRun:
        inputs = [RunInput.model_construct(asset=arr.asset, partition=arr.partition,
                                           version=arr.version, arrival_id=arr.arrival_id)]
        return PlannedRun(run_id_of(self.name, arr), arr.partition, record, inputs,
                          arr.traceparent, mode=arr.mode, replay=arr.replay, payload=m.value,
                          kafka_partition=m.partition, backfill=arr.backfill)

    def _replan(self, m: Message, arr: Arrival) -> PlannedRun | None:
        assert self.gate is not None, "a planned run reached a stage without a trigger"
        plan = self.gate.replan(m.value, arr)
        if plan is None:
            self.ctx.counters.dead_lettered += 1
        return plan

    async def _execute(self, plan: PlannedRun, attempt: int, m: Message | None,
                       out: list[OutMessage], spans: list[RecSpan | None],
                       proc: RecSpan | None) -> None:
        """Run ``plan``; then, if it released a gate's hold, the runs parked behind it."""
        for parked in await self._run(plan, attempt, m, out, spans, proc):
            arr = Arrival.from_message(parked.key, parked.value, parked.headers)
            try:
                again = self._unpark(parked, arr)
            except (ValueError, LookupError) as e:  # a contract grew stricter meanwhile
                reason = (f"stage {self.name!r}: a run parked behind the hold on partition "
                          f"{plan.partition!r} cannot run: {type(e).__name__}: {e}")
                out.append(self._dead(reason, parked, arr, None, spans, e))
                continue
            await self._execute(again, 1, parked, out, spans, None)

    def _unpark(self, parked: Message, arr: Arrival) -> PlannedRun:
        if any(k == H_PLANNED for k, _ in parked.headers):
            assert self.gate is not None, "a planned run parked at a stage without a trigger"
            again = self.gate.replan(parked.value, arr)
            if again is None:
                raise ValueError("its planned inputs are unreadable")
            again.kafka_partition = parked.partition
            return again
        asset = self.by_asset.get(arr.asset)
        if asset is None:
            raise LookupError(f"asset {arr.asset!r} is no input of this stage")
        return self._plan_each(parked, arr, asset.contract.model_validate_json(parked.value))

    async def _run(self, plan: PlannedRun, attempt: int, m: Message | None,
                   out: list[OutMessage], spans: list[RecSpan | None],
                   proc: RecSpan | None) -> list[Message]:
        tr, spec = self.ctx.tracing, self.spec
        if plan.run_id in self.fired:
            self.ctx.counters.deduped += 1
            self.ctx.metrics.add(self.ctx.metrics.runs, (spec.name, "deduped"))
            return []
        attrs: dict[str, AttrValue] = {
            "streamflow.stage": spec.name, "streamflow.run_id": plan.run_id,
            "streamflow.partition": plan.partition, "streamflow.mode": plan.mode,
            "streamflow.attempt": attempt,
        }
        if plan.backfill:
            attrs["streamflow.backfill_id"] = plan.backfill
        run = tr.start_child(f"run {spec.name}", proc or plan.parent, SpanKind.INTERNAL,
                             attrs, links=plan.links)
        spans.append(run)
        started = time.time()
        released: list[Message] = []
        if self.keeper is not None:
            go, released = await gate_run(self, plan, attempt, m, out, spans, run, started)
            if not go:
                return []
        self.ctx.counters.runs += 1
        if self.ctx.lineage is not None:
            self._lineage(plan, attempt, started, None)
        mt = self.ctx.metrics
        if m is not None and attempt == 1 and m.timestamp_ms > 0:
            mt.fire_latency.observe(self.name, max(0.0, started - m.timestamp_ms / 1000))
        try:
            with tr.run_context(run, plan.parent):
                outputs = list(_outputs(await self._call(plan.arg), spec.output))
        except Exception as e:  # user code: a failure retries or dead-letters, never crashes
            policy = spec.retry
            reason = f"stage {spec.name!r} failed in run {plan.run_id} (attempt {attempt} of " \
                     f"{policy.attempts}): {type(e).__name__}: {e}"
            if run is None:  # not sampled: the failing run is exported all the same
                run = tr.start_failure(f"run {spec.name}", plan.parent, SpanKind.INTERNAL,
                                       attrs, start_time=int(started * 1e9))
                spans.append(run)
            _fail(run, e, reason)
            if run is not None:
                run.add_event("attempt", {"streamflow.attempt": attempt,
                                          "streamflow.outcome": "failed"})
            mt.stage_duration.observe(spec.name, time.time() - started)
            mt.failed("stage", spec.name, reason, plan.run_id)
            if policy.should_retry(e, attempt):
                self.ctx.counters.retried += 1
                mt.add(mt.retries, (spec.name,))
                mt.add(mt.runs, (spec.name, "retrying"))
                due = int((time.time() + policy.delay_s(attempt)) * 1000)
                keep = [(k, v) for k, v in self._run_headers(plan, m)
                        if k not in (H_ATTEMPT, H_RETRY_AT, H_PLANNED, H_TRACEPARENT)]
                keep += [(H_ATTEMPT, str(attempt + 1).encode()), (H_RETRY_AT, str(due).encode())]
                if plan.planned:
                    keep.append((H_PLANNED, b"1"))
                tp = traceparent_of(run, plan.parent)
                if tp is not None:
                    keep.append((H_TRACEPARENT, tp))
                key = m.key if m is not None and not plan.planned else None
                out.append(OutMessage(self.retry_topic, plan.payload, key, keep,
                                      partition_key=plan.partition.encode()))
                out.append(self._ledger(plan, "retrying", attempt, started, [], e))
                if self.ctx.lineage is not None:
                    self._lineage(plan, attempt, time.time(), "retrying", reason)
            else:
                out.append(self._dead_plan(reason, plan, m, run, spans, e, attempt))
                out.append(self._ledger(plan, "dead-lettered", attempt, started, [], e))
                mt.add(mt.runs, (spec.name, "dead-lettered"))
                self.fire(plan)
                if self.ctx.lineage is not None:
                    self._lineage(plan, attempt, time.time(), "dead-lettered", reason)
            return released
        mt.stage_duration.observe(spec.name, time.time() - started)
        mt.add(mt.runs, (spec.name, "succeeded"))
        if run is not None:
            run.add_event("attempt", {"streamflow.attempt": attempt,
                                      "streamflow.outcome": "succeeded"})
        produced = self._emit(outputs, plan, run, out, spans)
        if produced and spec.output is not None:
            mt.add(mt.arrivals_out, (spec.output.name,), len(produced))
        out.append(self._ledger(plan, "succeeded", attempt, started, produced, None))
        self.fire(plan)
        if self.ctx.lineage is not None:
            self._lineage(plan, attempt, time.time(), "succeeded")
        return released

    def _lineage(self, plan: PlannedRun, attempt: int, at: float, status: str | None,
                 error: str | None = None) -> None:
        """START when ``status`` is None, else the attempt's end event."""
        assert self.ctx.lineage is not None
        kw: dict[str, Any] = dict(
            stage=self.name, run_id=plan.run_id, partition=plan.partition, attempt=attempt,
            mode=plan.mode, backfill=plan.backfill, inputs=[a.name for a in self.spec.inputs],
            output=self.spec.output.name if self.spec.output is not None else None,
            at_ms=int(at * 1000))
        if status is None:
            self.ctx.lineage.started(**kw)
        else:
            self.ctx.lineage.ended(**kw, status=status, error=error)

    def _dead_plan(self, reason: str, plan: PlannedRun, m: Message | None,
                   parent: RecSpan | None, spans: list[RecSpan | None], exc: BaseException | None,
                   attempt: int, kind: str | None = None) -> OutMessage:
        """Dead-letter a run: its payload replays it (a record, or the planned inputs)."""
        arr = self._plan_arrival(plan)
        hdrs = [(k, v) for k, v in self._run_headers(plan, m)
                if k not in (H_ATTEMPT, H_RETRY_AT, H_PLANNED)]
        if plan.planned:
            hdrs.append((H_PLANNED, b"1"))
        # A planned run's message is whichever arrival fired it, maybe of another key: its
        # own partition number and key travel instead.
        where = m if m is not None and not plan.planned else Message(
            self.topics[0], plan.kafka_partition, -1, None, b"", [], 0)
        dead = Message(where.topic, where.partition, where.offset, where.key, plan.payload,
                       hdrs, where.timestamp_ms)
        return self._dead(reason, dead, arr, parent, spans, exc, plan.run_id, attempt, kind)

    @staticmethod
    def _plan_arrival(plan: PlannedRun) -> Arrival:
        first = plan.inputs[0] if plan.inputs else None
        return Arrival(first.arrival_id if first else plan.run_id,
                       first.asset if first else "", plan.partition, 1, 0, plan.run_id,
                       plan.mode, None, plan.payload, plan.parent, plan.replay, plan.backfill)

    def _run_headers(self, plan: PlannedRun, m: Message | None) -> list[tuple[str, bytes]]:
        """What a retry or dead letter of the run carries: its input's headers, or for a
        planned run (whose message may be another key's) headers built from the run."""
        if m is not None and not plan.planned:
            return m.headers
        return self._plan_arrival(plan).headers()

    async def _call(self, arg: Any) -> Any:
        fn, timeout = self.spec.fn, self.spec.retry.timeout_s
        if self.spec.is_async:
            result = fn(arg)
            assert inspect.isawaitable(result)
            return await (asyncio.wait_for(result, timeout) if timeout else result)
        if timeout is None:
            return fn(arg)
        return await asyncio.wait_for(asyncio.to_thread(fn, arg), timeout)

    def _emit(self, outputs: list[BaseModel], plan: PlannedRun, run: RecSpan | None,
              out: list[OutMessage], spans: list[RecSpan | None]) -> list[str]:
        tr, out_asset = self.ctx.tracing, self.spec.output
        if out_asset is None:
            return []
        ids = []
        for i, rec in enumerate(outputs):
            key = out_asset.key_of(rec)
            key_b = key.encode() if key is not None else None
            send = tr.start_child(f"send {self.out_topic}", run, SpanKind.PRODUCER,
                                  partial(tr.send_attributes, self.out_topic, key_b))
            spans.append(send)
            o = Arrival(stable_id(plan.run_id, i), out_asset.name, out_asset.partition_of(rec),
                        out_asset.version, out_asset.event_time_ms(rec), plan.run_id,
                        plan.mode, key_b, rec.model_dump_json().encode(),
                        traceparent_of(send, plan.parent), backfill=plan.backfill)
            out.append(o.message(self.out_topic))
            ids.append(o.arrival_id)
        return ids

    def _ledger(self, plan: PlannedRun, status: RunStatus, attempt: int, started: float,
                outputs: list[str], exc: BaseException | None) -> OutMessage:
        return record_message(
            self.runs_topic, plan.run_id, self.spec.name, plan.partition, status, attempt,
            self.spec.retry.attempts, int(started * 1000), int(time.time() * 1000), plan.mode,
            plan.replay, plan.inputs, outputs, error_info(exc) if exc is not None else None,
            plan.parent[3:35].decode() if plan.parent else None, plan.checks,
            plan.kafka_partition if plan.kafka_partition >= 0 else None, plan.backfill,
            self.spec.output.name if self.spec.output is not None else None)


def _due_ms(m: Message) -> int:
    """When a retry may run (0: now); bad metadata from a foreign producer means now."""
    return _int(next((v for k, v in m.headers if k == H_RETRY_AT), None), 0)


def _outputs(result: Any, asset: Asset[Any] | None) -> Iterable[BaseModel]:
    """Normalise what a stage returned and hold it to the output contract."""
    if result is None:
        return
    items = [result] if isinstance(result, BaseModel | dict) else list(result)
    for item in items:
        if asset is None:
            raise TypeError("stage has no output asset but returned a value")
        if isinstance(item, asset.contract):
            yield item
        elif isinstance(item, BaseModel):
            yield asset.contract.model_validate(item.model_dump())
        else:
            yield asset.contract.model_validate(item)
