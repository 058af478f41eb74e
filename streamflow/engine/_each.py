"""An ``OnEach`` stage's input lane, a polled batch at a time: the common case, kept lean.

Every record gets what the general path (``StageRunner.process_one``) gives it: its contract
checked, a run id that dedupes redelivery, a ledger entry with its inputs and outputs, metrics,
the trace context passed on. What can be decided once per batch is decided once (tracing on,
labels, the output's placement); metrics are counted per batch, the ledger written per batch and
input partition. Anything unusual for a record (a sampled trace, a replay or rerun, a backfill
lane, a bad record, a failing run) goes the general way, where it is handled one at a time.
"""

from __future__ import annotations

import contextlib
import hashlib
import time
from collections.abc import Awaitable
from typing import Any, Protocol, cast

from pydantic import ValidationError

from streamflow.model import (
    H_ARRIVAL_ID,
    H_ASSET,
    H_ATTEMPT,
    H_BACKFILL,
    H_MODE,
    H_PARTITION,
    H_PLANNED,
    H_REPLAY,
    H_RERUN,
    H_TRACEPARENT,
    H_VERSION,
    Arrival,
    Asset,
    Message,
    Mode,
    OutMessage,
    assemble_headers,
    header_int,
    mode_of,
    output_id,
    run_headers,
    stable_id,
    stable_id3,
)
from streamflow.observability import RecSpan, is_sampled, trace_id_of
from streamflow.state import run_entry
from streamflow.transports import Subscription

from . import _outcomes
from ._outcomes import StageLike

UNTRACED = contextlib.nullcontext()
"""Reusable (it keeps no state): the context of a batch's runs when tracing is off."""

# Headers that send a record the general way: a planned or retried run, a replay, a rerun.
_UNUSUAL = frozenset((H_PLANNED, H_ATTEMPT, H_REPLAY, H_RERUN))


class EachStage(StageLike, Protocol):
    by_topic: dict[str, Asset[Any]]
    lane_topics: frozenset[str]
    placed_topics: frozenset[str]
    """Inputs with as many partitions as the output topic (see ``output_message``)."""
    sub: Subscription | None

    async def process_one(self, m: Message, out: list[OutMessage],
                          spans: list[RecSpan | None]) -> None: ...


class _Tally:
    """A batch's metrics, added to the registry once at its end."""

    __slots__ = ("arrivals", "deduped", "durations", "fire_latency", "outputs", "runs")

    def __init__(self) -> None:
        self.arrivals: dict[str, int] = {}
        self.runs = self.deduped = self.outputs = 0
        self.fire_latency: list[float] = []
        self.durations: list[float] = []

    def flush(self, st: EachStage) -> None:
        mt, c, name = st.ctx.metrics, st.ctx.counters, st.name
        for asset, n in self.arrivals.items():
            mt.add(mt.arrivals_in, (asset, name), n)
        if self.runs:
            c.runs += self.runs
            mt.add(mt.runs, (name, "succeeded"), self.runs)
        if self.deduped:
            c.deduped += self.deduped
            mt.add(mt.runs, (name, "deduped"), self.deduped)
        if self.outputs and st.spec.output is not None:
            mt.add(mt.arrivals_out, (st.spec.output.name,), self.outputs)
        mt.fire_latency.observe_many(name, self.fire_latency)
        mt.stage_duration.observe_many(name, self.durations)


def lean(st: EachStage) -> bool:
    """Whether the stage's input lane may take this path: per-run lineage events, a timeout
    (a thread per call) and gates need the general one."""
    return (st.gate is None and st.keeper is None and st.ctx.lineage is None
            and st.spec.retry.timeout_s is None)


async def handle_each(st: EachStage, msgs: list[Message], out: list[OutMessage],
                      spans: list[RecSpan | None]) -> None:
    """Run every record of ``msgs``; outputs and dead letters go to ``out``, ledger entries to
    ``st.book``."""
    b = _Batch(st, out)
    fn, out_asset, tr = st.spec.fn, st.spec.output, st.ctx.tracing
    is_async = st.spec.is_async
    for m in msgs:
        ready = b.admit(m)
        if ready is True:
            await st.process_one(m, out, spans)
            continue
        if ready is False:
            continue
        h, record, run_id, partition, arrival_id = ready
        started = time.time()
        if m.timestamp_ms > 0:
            b.tally.fire_latency.append(max(0.0, started - m.timestamp_ms / 1000))
        try:  # user code logs under the record's trace id, an async stage's body included
            with tr.run_context(None, h.get(H_TRACEPARENT)) if b.traced else UNTRACED:
                result = fn(record)
                if is_async:
                    result = await cast(Awaitable[Any], result)
                outputs = _outcomes.outputs_of(result, out_asset)
        except Exception as e:  # user code: retried or dead-lettered, as on the general path
            plan = st.plan_each(m, Arrival.from_message(m.key, m.value, m.headers), record)
            st.ctx.counters.runs += 1
            _outcomes.failed(st, e, plan, 1, m, out, spans, None, started)
            continue
        b.succeeded(m, h, run_id, partition, arrival_id, outputs, started)
    b.tally.flush(st)


class _Batch:
    """What a batch decides once, and the per-record steps around the stage function."""

    def __init__(self, st: EachStage, out: list[OutMessage]) -> None:
        self.st, self.out, self.tally = st, out, _Tally()
        self.traced = st.ctx.tracing.enabled
        self.max_bytes = st.ctx.max_record_bytes
        # The sets themselves: a membership test or two per record (they rotate only between
        # batches).
        self.fired, self.fired_before = st.fired.ids.current, st.fired.ids.previous
        self.in_txn = st.sub is not None and st.sub.exactly_once
        self.name = st.name
        self.fired_add = st.fired.add
        asset = st.spec.output
        if asset is not None:  # what every output of the stage shares
            self.out_topic = st.out_topic
            self.asset_h = (H_ASSET, st.out_asset_b)
            self.version_h = (H_VERSION, st.out_version_b)
            self.key_and_partition = asset.key_and_partition
            self.event_time_ms = asset.event_time_ms

    def admit(self, m: Message) -> tuple[dict[str, bytes], Any, str, str, str] | bool:
        """(headers, record, run id, partition key, arrival id) of a record to run here; False
        if it already ran, True if it takes the general path."""
        accepted = self.accept(m)
        if accepted is None:
            return True
        h, record = accepted
        raw_id = h.get(H_ARRIVAL_ID)
        arrival_id = raw_id.decode("utf-8", "replace") if raw_id else stable_id(
            "foreign", hashlib.blake2b(m.value, digest_size=16).hexdigest())  # by content
        partition = h.get(H_PARTITION, b"default").decode("utf-8", "replace")
        run_id = stable_id3(self.name, partition, arrival_id)
        if run_id in self.fired or run_id in self.fired_before:
            self.tally.deduped += 1
            return False
        return h, record, run_id, partition, arrival_id

    def accept(self, m: Message) -> tuple[dict[str, bytes], Any] | None:
        """(headers, validated record) of an ordinary arrival for this lane; None for one
        that takes the general path."""
        st = self.st
        h = dict(m.headers)
        asset = st.by_topic.get(m.topic)
        if (asset is None or len(m.value) > self.max_bytes or m.topic in st.lane_topics
                or not _UNUSUAL.isdisjoint(h)):
            return None
        if self.traced:
            tp = h.get(H_TRACEPARENT)
            if tp is not None and is_sampled(tp):
                return None
        try:
            record = asset.contract.model_validate_json(m.value)
        except ValidationError:  # dead-lettered there, with the reason
            return None
        arrivals = self.tally.arrivals
        arrivals[asset.name] = arrivals.get(asset.name, 0) + 1
        return h, record

    def succeeded(self, m: Message, h: dict[str, bytes], run_id: str, partition: str,
                  arrival_id: str, outputs: list[Any], started: float) -> None:
        backfill_b = h.get(H_BACKFILL)
        asset = h[H_ASSET].decode("utf-8", "replace") if H_ASSET in h else ""
        pkey_in = h.get(H_PARTITION, b"default") if m.topic in self.st.placed_topics else None
        self.record_run(
            run_id, partition, m.partition, outputs, started, mode_of(h.get(H_MODE)),
            h.get(H_TRACEPARENT), backfill_b.decode("utf-8", "replace") if backfill_b else "",
            [[asset, partition, header_int(h.get(H_VERSION), 1), arrival_id]], pkey_in)
        self.fired_add(run_id, m.partition, self.in_txn)

    def record_run(self, run_id: str, partition: str, kafka_partition: int, outputs: list[Any],
                   started: float, mode: Mode, tp: bytes | None, backfill: str,
                   inputs: list[list[Any]], pkey_in: bytes | None,
                   settle_at: int | None = None) -> None:
        """A succeeded run's outputs (to ``out``), its ledger entry and its metrics.
        ``pkey_in``: the partition key its outputs share the input's partition number with."""
        tally = self.tally
        started_ms = int(started * 1000)
        ids = []
        if outputs:
            tail = run_headers(run_id, mode, tp, backfill=backfill)
            for i, rec in enumerate(outputs):
                ids.append(self.emit(rec, i, run_id, tail, started_ms, pkey_in,
                                     kafka_partition))
        ended = time.time()
        tally.durations.append(ended - started)
        tally.runs += 1
        tally.outputs += len(ids)
        self.st.book.add(kafka_partition, run_entry(
            run_id, partition, 1, started_ms, int(ended * 1000), inputs, ids,
            mode=mode, trace_id=trace_id_of(tp), backfill=backfill), settle_at=settle_at)

    def emit(self, rec: Any, i: int, run_id: str, tail: list[tuple[str, bytes]],
             started_ms: int, pkey_in: bytes | None, partition_in: int) -> str:
        """``output_message``'s output, with what the stage and the run share built once:
        the same message, the same id."""
        oid = output_id(run_id, i)
        key, pkey = self.key_and_partition(rec)
        hdrs = assemble_headers(oid.encode(), self.asset_h, self.version_h, pkey,
                                self.event_time_ms(rec, started_ms), tail)
        self.out.append(OutMessage(self.out_topic, rec.__pydantic_serializer__.to_json(rec),
                                   key, hdrs, pkey,
                                   partition_in if pkey == pkey_in else None))
        return oid
