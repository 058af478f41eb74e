"""Running a stage: one run per arrival, retried on its own lane, recorded in the run ledger.

A failed attempt that may be retried is parked on the stage's retry topic with its due time,
and its input is committed, so the main input keeps flowing (other partitions are never held
up by one run's backoff). A separate lane consumes the retry topic and waits for each due time.
Run ids derive from (stage, partition, input arrival id), so a run that already reached a final
status in the ledger is not run again when its arrival is redelivered or duplicated.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import time
from collections.abc import Iterable
from functools import partial
from typing import Any

from opentelemetry import trace
from opentelemetry.trace import Span, SpanKind
from pydantic import BaseModel, ValidationError

from ._deadletter import describe_validation, error_info
from ._ledger import RunInput, RunRecord, RunStatus, runs_topic
from ._model import H_ATTEMPT, H_RETRY_AT, Arrival, Asset, stable_id
from ._pipeline import StageSpec
from ._runners import Ctx, _Consumer, _end, _fail, replay_topic
from ._telemetry import traceparent_of
from .transports import Message, OutMessage


def run_id_of(stage: str, arr: Arrival) -> str:
    """Deterministic: a redelivered arrival maps to the same run; a replay makes a new one."""
    if arr.replay:
        return stable_id(stage, arr.partition, arr.arrival_id, f"replay-{arr.replay}")
    return stable_id(stage, arr.partition, arr.arrival_id)


class StageRunner(_Consumer):
    """Consumes a stage's inputs (``retry_lane=False``) or its retry topic (``True``)."""

    def __init__(self, spec: StageSpec, ctx: Ctx, fired: set[str], retry_lane: bool = False):
        super().__init__(ctx)
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
        self.out_topic = ctx.topic(spec.output) if spec.output is not None else ""

    async def handle(self, msgs: list[Message]) -> list[Message]:
        out: list[OutMessage] = []
        spans: list[Span | None] = []
        done: list[Message] = []
        for m in msgs:
            if self.retry_lane and not await self._wait_until_due(m):
                break  # stopping: the rest stays uncommitted and comes back next run
            await self._process(m, out, spans)
            done.append(m)
        await self.ctx.transport.publish(out)
        _end(reversed(spans))
        return done

    async def _wait_until_due(self, m: Message) -> bool:
        due_ms = next((int(v) for k, v in m.headers if k == H_RETRY_AT), 0)
        delay = due_ms / 1000 - time.time()
        if delay <= 0:
            return True
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stop.wait(), delay)
        return not self._stop.is_set()

    def _asset_of(self, m: Message, arr: Arrival) -> Asset[Any] | None:
        return self.by_asset.get(arr.asset) if self.retry_lane else self.by_topic.get(m.topic)

    async def _process(self, m: Message, out: list[OutMessage], spans: list[Span | None]) -> None:
        tr, spec = self.ctx.tracing, self.spec
        arr = Arrival.from_message(m.key, m.value, m.headers)
        proc = tr.start_child(
            f"process {m.topic}", arr.traceparent, SpanKind.CONSUMER,
            partial(tr.process_attributes, m.topic, m.partition, m.offset, self.group, m.key))
        spans.append(proc)
        asset = self._asset_of(m, arr)
        if asset is None:
            reason = f"{m.topic}@{m.partition}:{m.offset}: asset {arr.asset!r} is no input of " \
                     f"stage {spec.name!r}"
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
        run_id = run_id_of(spec.name, arr)
        if run_id in self.fired:
            self.ctx.counters.deduped += 1
            return
        attempt = next((int(v) for k, v in m.headers if k == H_ATTEMPT), 1)
        run = tr.start_child(f"run {spec.name}", proc, SpanKind.INTERNAL, {
            "streamflow.stage": spec.name, "streamflow.run_id": run_id,
            "streamflow.partition": arr.partition, "streamflow.mode": arr.mode,
            "streamflow.attempt": attempt,
        })
        spans.append(run)
        started = time.time()
        self.ctx.counters.runs += 1
        try:
            with trace.use_span(run, end_on_exit=False) if run is not None \
                    else contextlib.nullcontext():
                outputs = list(_outputs(await self._call(record), spec.output))
        except Exception as e:  # user code: a failure retries or dead-letters, never crashes
            policy = spec.retry
            reason = f"stage {spec.name!r} failed on {arr.arrival_id} (attempt {attempt} of " \
                     f"{policy.attempts}): {type(e).__name__}: {e}"
            _fail(run, e, reason)
            if policy.should_retry(e, attempt):
                self.ctx.counters.retried += 1
                due = int((time.time() + policy.delay_s(attempt)) * 1000)
                headers = [(k, v) for k, v in m.headers if k not in (H_ATTEMPT, H_RETRY_AT)]
                headers += [(H_ATTEMPT, str(attempt + 1).encode()),
                            (H_RETRY_AT, str(due).encode())]
                out.append(OutMessage(self.retry_topic, m.value, m.key, headers))
                out.append(self._ledger(run_id, arr, "retrying", attempt, started, [], e))
            else:
                out.append(self._dead(reason, m, arr, run, spans, e, run_id, attempt))
                out.append(self._ledger(run_id, arr, "dead-lettered", attempt, started, [], e))
                self.fired.add(run_id)
            return
        produced = self._emit(outputs, run_id, arr, run, out, spans)
        out.append(self._ledger(run_id, arr, "succeeded", attempt, started, produced, None))
        self.fired.add(run_id)

    async def _call(self, record: BaseModel) -> Any:
        fn, timeout = self.spec.fn, self.spec.retry.timeout_s
        if self.spec.is_async:
            result = fn(record)
            assert inspect.isawaitable(result)
            return await (asyncio.wait_for(result, timeout) if timeout else result)
        if timeout is None:
            return fn(record)
        return await asyncio.wait_for(asyncio.to_thread(fn, record), timeout)

    def _emit(self, outputs: list[BaseModel], run_id: str, arr: Arrival, run: Span | None,
              out: list[OutMessage], spans: list[Span | None]) -> list[str]:
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
            o = Arrival(stable_id(run_id, i), out_asset.name, out_asset.partition_of(rec),
                        out_asset.version, out_asset.event_time_ms(rec), run_id, arr.mode,
                        key_b, rec.model_dump_json().encode(),
                        traceparent_of(send, arr.traceparent))
            out.append(OutMessage(self.out_topic, o.value, o.key, o.headers()))
            ids.append(o.arrival_id)
        return ids

    def _ledger(self, run_id: str, arr: Arrival, status: RunStatus, attempt: int,
                started: float, outputs: list[str], exc: BaseException | None) -> OutMessage:
        rec = RunRecord(
            run_id=run_id, stage=self.spec.name, partition=arr.partition, status=status,
            attempt=attempt, max_attempts=self.spec.retry.attempts,
            started_ms=int(started * 1000), ended_ms=int(time.time() * 1000), mode=arr.mode,
            replay=arr.replay,
            inputs=[RunInput(asset=arr.asset, partition=arr.partition, version=arr.version,
                             arrival_id=arr.arrival_id)],
            outputs=outputs, error=error_info(exc) if exc is not None else None,
        )
        return rec.message(self.runs_topic)


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
