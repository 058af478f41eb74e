"""The three loops of a worker: sources publish arrivals, stages run, sinks deliver.

Each loop handles a polled batch as a unit: publish everything it produced (outputs and dead
letters), and only then commit its input, so a crash redelivers rather than loses.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Iterable
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Any, TypeGuard

import orjson
from opentelemetry.trace import SpanKind
from pydantic import ValidationError

from ._alerts import Alerter
from ._deadletter import dead_letter_message, describe_validation, error_info
from ._metrics import Metrics
from ._model import H_TRACEPARENT, Arrival, Asset, DeadLetter, stable_id
from ._pipeline import SinkSpec, SourceSpec
from ._spans import AttrValue, RecSpan
from ._telemetry import Tracing, parse_traceparent, traceparent_of
from ._triggers import PartitionState
from .connectors import ConnectorContext, Sink, SinkRecord, Source, SourceRecord
from .transports import (
    RECOVERABLE,
    Message,
    OutMessage,
    Subscription,
    TransactionalSubscription,
    TransactionFailed,
    Transport,
)

if TYPE_CHECKING:
    from ._lineage import Lineage

log = logging.getLogger("streamflow.engine")


@dataclass
class Counters:
    records_in: int = 0
    records_out: int = 0
    dead_lettered: int = 0
    runs: int = 0
    retried: int = 0
    deduped: int = 0


def _end(spans: Iterable[RecSpan | None]) -> None:
    for s in spans:
        if s is not None:
            s.end()


def _fail(span: RecSpan | None, exc: BaseException | None, message: str) -> None:
    if span is not None:
        span.fail(message, exc)


@dataclass
class Ctx:
    transport: Transport
    tracing: Tracing
    counters: Counters
    dlq_topic: str
    poll_batch: int
    namespace: str
    metrics: Metrics
    commit_interval_s: float = 0.1
    alerter: Alerter | None = None
    pipeline: str = ""
    max_record_bytes: int = 256 * 1024
    backfill_batch: int = 16
    lineage: Lineage | None = None
    """OpenLineage run events, when ``Settings.lineage`` names a target."""

    def topic(self, asset: Asset[Any]) -> str:
        return asset.topic(self.namespace)


class SourceRunner:
    def __init__(self, spec: SourceSpec, source: Source, ctx: Ctx) -> None:
        self.spec, self.source, self.ctx = spec, source, ctx

    async def run(self) -> None:
        asset = self.spec.asset
        tr = self.ctx.tracing
        topic = self.ctx.topic(asset)
        async for batch in self.source.read():
            out: list[OutMessage] = []
            spans: list[RecSpan | None] = []
            for rec in batch.records:
                root, root_tp = self._read_span(rec)
                spans.append(root)
                arrival_id = stable_id(asset.name, rec.record_id)
                try:
                    model = asset.contract.model_validate(rec.data)
                except ValidationError as e:
                    reason = (f"{_where(rec.origin)}: "
                              f"{describe_validation(e, asset.contract.__name__, asset.version)}")
                    root = root or self._failed_root(rec, root_tp, spans)
                    _fail(root, None, reason)
                    out.append(self._dead(reason, rec.origin, orjson.dumps(rec.data).decode(),
                                          arrival_id, root, spans))
                    continue
                key = asset.key_of(model)
                key_b = key.encode() if key is not None else None
                send = tr.start_child(f"send {topic}", root, SpanKind.PRODUCER,
                                      partial(tr.send_attributes, topic, key_b))
                spans.append(send)
                arr = Arrival(arrival_id, asset.name, asset.partition_of(model), asset.version,
                              asset.event_time_ms(model), f"source:{self.spec.name}", "live",
                              key_b, model.model_dump_json().encode(),
                              traceparent_of(send, root_tp))
                out.append(arr.message(topic))
            for rej in batch.rejects:
                root, tp = tr.start_root(f"read {self.spec.name}",
                                         {"streamflow.source": self.spec.name})
                root = root or tr.start_failure(f"read {self.spec.name}", tp,
                                                attributes={"streamflow.source": self.spec.name},
                                                root=True)
                spans.append(root)
                _fail(root, None, rej.reason)
                rid = stable_id(asset.name, "reject", str(rej.origin))
                out.append(self._dead(rej.reason, rej.origin, rej.payload, rid, root, spans))
            await self.ctx.transport.publish(out)
            _end(reversed(spans))
            # Counted from this batch's own messages: sources run concurrently.
            batch.dead_lettered = sum(1 for o in out if o.topic == self.ctx.dlq_topic)
            mt = self.ctx.metrics
            mt.add(mt.arrivals_out, (asset.name,), len(out) - batch.dead_lettered)
            await self.source.ack(batch)
            c = self.ctx.counters
            c.records_in += len(batch.records) + len(batch.rejects)

    def _read_attrs(self, rec: SourceRecord) -> dict[str, AttrValue]:
        return {
            "streamflow.source": self.spec.name,
            "streamflow.asset": self.spec.asset.name,
            **{f"streamflow.origin.{k}": str(v) for k, v in rec.origin.items()},
        }

    def _read_span(self, rec: SourceRecord) -> tuple[RecSpan | None, bytes | None]:
        """The record's root span if sampled, and the traceparent it travels with either way."""
        tr = self.ctx.tracing
        if not tr.enabled:
            return None, rec.traceparent
        if parse_traceparent(rec.traceparent) is not None:  # continue the producer's trace
            assert rec.traceparent is not None
            return tr.start_consumer_root(f"read {self.spec.name}", rec.traceparent,
                                          partial(self._read_attrs, rec))
        return tr.start_root(f"read {self.spec.name}", partial(self._read_attrs, rec))

    def _failed_root(self, rec: SourceRecord, tp: bytes | None,
                     spans: list[RecSpan | None]) -> RecSpan | None:
        """An unsampled record failed: export its read span after all (failures stay visible)."""
        fresh = parse_traceparent(rec.traceparent) is None
        span = self.ctx.tracing.start_failure(
            f"read {self.spec.name}", tp if fresh else rec.traceparent,
            SpanKind.INTERNAL if fresh else SpanKind.CONSUMER, partial(self._read_attrs, rec),
            root=fresh)
        spans.append(span)
        return span

    def _dead(self, reason: str, origin: dict[str, Any], payload: str, arrival_id: str,
              parent: RecSpan | None, spans: list[RecSpan | None]) -> OutMessage:
        tr = self.ctx.tracing
        send = tr.start_child(f"send {self.ctx.dlq_topic}", parent, SpanKind.PRODUCER,
                              partial(tr.send_attributes, self.ctx.dlq_topic, arrival_id.encode()))
        spans.append(send)
        self.ctx.counters.dead_lettered += 1
        mt = self.ctx.metrics
        mt.add(mt.dead_letters, ("source", self.spec.name))
        mt.failed("source", self.spec.name, reason)
        dl = DeadLetter(reason, self.spec.name, origin, payload, arrival_id=arrival_id,
                        kind="source")
        return dead_letter_message(self.ctx.dlq_topic, dl, traceparent_of(send))


def _where(origin: dict[str, Any]) -> str:
    if "file" in origin and "line" in origin:
        return f"{origin['file']} line {origin['line']}"
    return ", ".join(f"{k}={v}" for k, v in origin.items()) or "record"


class _Consumer:
    """Shared poll → handle → publish → commit loop of stages and sinks."""

    group: str
    topics: list[str]
    name: str
    kind = "stage"

    def __init__(self, ctx: Ctx) -> None:
        self.ctx = ctx
        self.sub: Subscription | None = None
        self._stop = asyncio.Event()
        self._acks: list[Awaitable[object]] = []  # publishes whose acks the next commit awaits

    async def open(self) -> None:
        self.sub = await self.ctx.transport.subscribe(self.group, self.topics)

    def stop(self) -> None:
        self._stop.set()

    async def lag(self) -> int:
        return 1 << 30 if self.sub is None else await self.sub.lag()

    async def run(self) -> None:
        """Poll, handle, and commit at most every ``commit_interval_s`` (and whenever idle):
        a commit is a broker round trip, and redelivery after a crash is deduped by run id."""
        sub = self.sub
        assert sub is not None, "open() first"
        if sub.exactly_once:
            await self._run_transactional()
            return
        loop = asyncio.get_running_loop()
        pending: list[Message] = []
        last_commit = loop.time()
        committing: asyncio.Task[None] | None = None  # one commit in flight, off the hot path
        while not self._stop.is_set():
            msgs, _ = await self.poll(sub)
            if msgs:
                pending.extend(await self.handle(msgs))
            due = not msgs or loop.time() - last_commit >= self.ctx.commit_interval_s
            if pending and due and (committing is None or committing.done()):
                if committing is not None:
                    committing.result()  # surface a failed commit or publish
                committing = asyncio.create_task(self._commit_acked(sub, pending, self._acks))
                pending, self._acks, last_commit = [], [], loop.time()
            elif len(self._acks) > 64:  # bound what is in flight
                await self._acks.pop(0)
            await self.idle()
        if committing is not None:
            await committing
        if pending or self._acks:
            await self._commit_acked(sub, pending, self._acks)
        await sub.close()

    @staticmethod
    async def _commit_acked(sub: Subscription, pending: list[Message],
                            acks: list[Awaitable[object]]) -> None:
        """Offsets only once every output of those inputs is durable."""
        if acks:
            await asyncio.gather(*acks)
        if pending:
            await sub.commit(pending)

    async def publish(self, out: list[OutMessage]) -> None:
        """At least once, outputs are handed to the transport and the acks awaited by the
        commit of their inputs, so the next batch is handled meanwhile (a backfill slice no
        longer idles a round trip); exactly once, they join the partition's transaction."""
        sub = self.sub
        if sub is None or sub.exactly_once:
            await self.ctx.transport.publish(out)
            return
        ack = await self.ctx.transport.publish_nowait(out)
        if ack is not None:
            self._acks.append(ack)

    async def _run_transactional(self) -> None:
        """Each polled partition is handled inside its transaction; open transactions commit
        with their input offsets when the consumer catches up or ``commit_interval_s`` passed.
        A lost transaction rewinds this consumer to its last commit."""
        loop = asyncio.get_running_loop()
        last_commit = loop.time()
        while not self._stop.is_set():
            sub = self.sub
            assert sub is not None and _transactional(sub)
            try:
                msgs, more = await self.poll(sub)
                by_partition: dict[int, list[Message]] = {}
                for m in msgs:
                    by_partition.setdefault(m.partition, []).append(m)
                for n, group in by_partition.items():
                    if not await self.wait_ready(group):
                        break  # stopping: the rest is read again by the next owner
                    async with sub.partition(n) as owned:
                        if owned:
                            done = await self.handle(group)
                            sub.mark_done(done, partial=len(done) < len(group))
                if self._stop.is_set():
                    break  # what was cut short must not be committed at the read position
                await self.idle()
                if sub.pending() and (not more or
                                      loop.time() - last_commit >= self.ctx.commit_interval_s):
                    await sub.flush()
                    self.committed()
                    last_commit = loop.time()
            except RECOVERABLE as e:
                await self._rewind(e)
        sub = self.sub
        if sub is not None and _transactional(sub):
            with contextlib.suppress(TransactionFailed):  # the next owner redoes it
                # Only what was handled: a batch cut short by the stop was read past.
                await sub.flush(at_position=False)
            await sub.close()

    async def _rewind(self, e: BaseException) -> None:
        """Drop everything since the last commit and read on from there, as a new owner
        would: the transaction's outputs were discarded, so in-memory state must be too."""
        log.warning("%s: %s: %s; rewinding to the last commit", self.group, type(e).__name__, e)
        mt = self.ctx.metrics
        mt.failed(self.kind, self.name, f"transaction lost: {e}")
        if self.sub is not None:
            with contextlib.suppress(Exception):
                await self.sub.close()
            self.sub = None
        await self.rewound()
        delay = 0.5
        while not self._stop.is_set():
            try:
                await self.open()
                return
            except Exception as err:  # the broker may still be down: keep trying
                log.warning("%s: cannot rejoin yet (%s: %s); retrying in %.1fs", self.group,
                            type(err).__name__, err, delay)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stop.wait(), delay)
                delay = min(delay * 2, 5.0)

    async def poll(self, sub: Subscription) -> tuple[list[Message], bool]:
        """The next records to handle, and whether more are waiting (a full batch)."""
        msgs = await sub.poll(self.ctx.poll_batch, timeout=0.2)
        return msgs, len(msgs) >= self.ctx.poll_batch

    async def rewound(self) -> None:
        """Hook: forget state derived from uncommitted work."""

    async def wait_ready(self, msgs: list[Message]) -> bool:
        """Hook: wait, outside the partition's transaction, until ``msgs`` may be handled;
        False if stopping. (A rebalance waits for the partition; aiokafka does not heartbeat
        meanwhile, so no long wait may happen inside.)"""
        return True

    def committed(self) -> None:
        """Hook: the open transactions committed."""

    @contextlib.asynccontextmanager
    async def scope(self, partition: int) -> AsyncIterator[bool]:
        """Work on input partition n outside ``handle`` (deadlines): inside n's transaction
        when exactly once; yields False if n is no longer ours."""
        sub = self.sub
        if sub is not None and _transactional(sub):
            async with sub.partition(partition) as owned:
                yield owned
        else:
            yield True

    async def handle(self, msgs: list[Message]) -> list[Message]:
        """Process ``msgs``; return those now done (a prefix, if stopping cut it short)."""
        raise NotImplementedError

    async def idle(self) -> None:
        """Called after every poll: time-driven work (deadlines) happens here."""

    def busy(self) -> bool:
        """Work is due that no input lag shows (an expired deadline): not drained yet."""
        return False

    def restoring(self) -> bool:
        """Still loading barrier state: not ready to serve."""
        return False

    def next_deadline_s(self) -> float | None:
        """Seconds until a barrier or window deadline of this consumer comes due, if any."""
        return None

    def has_gate(self) -> bool:
        return False

    def open_states(self) -> list[PartitionState]:
        """Barriers or windows waiting for inputs, for metrics and ``status``."""
        return []

    def _dead(self, reason: str, m: Message, arr: Arrival, parent: RecSpan | None,
              spans: list[RecSpan | None], exc: BaseException | None,
              run_id: str | None = None, attempts: int | None = None,
              kind: str | None = None) -> OutMessage:
        tr, topic = self.ctx.tracing, self.ctx.dlq_topic
        if parent is None and tr.enabled:  # unsampled: its failure is exported all the same
            parent = tr.start_failure(
                f"process {m.topic}", arr.traceparent, SpanKind.CONSUMER,
                partial(tr.process_attributes, m.topic, m.partition, m.offset, self.group, m.key))
            _fail(parent, exc, reason)
            spans.append(parent)
        send = tr.start_child(f"send {topic}", parent, SpanKind.PRODUCER,
                              partial(tr.send_attributes, topic, arr.arrival_id.encode()))
        spans.append(send)
        self.ctx.counters.dead_lettered += 1
        mt = self.ctx.metrics
        kind = kind or self.kind
        mt.add(mt.dead_letters, (kind, self.name))
        mt.failed(kind, self.name, reason, run_id)
        origin = {"topic": m.topic, "partition": m.partition, "offset": m.offset,
                  "asset": arr.asset, "partition_key": arr.partition,
                  "key": m.key.decode("utf-8", "replace") if m.key is not None else None}
        arrival = {k: v.decode("utf-8", "replace") for k, v in m.headers
                   if k.startswith("sf-") or k == H_TRACEPARENT}
        dl = DeadLetter(reason, self.name, origin, m.value.decode("utf-8", "replace"),
                        error_info(exc) if exc is not None else {}, arr.arrival_id,
                        run_id, attempts, arrival, kind)
        return dead_letter_message(topic, dl, traceparent_of(send, arr.traceparent))


class SinkRunner(_Consumer):
    def __init__(self, spec: SinkSpec, sink: Sink, ctx: Ctx) -> None:
        super().__init__(ctx)
        self.spec, self.sink = spec, sink
        self.name = spec.name
        self.connector = spec.connector if isinstance(spec.connector, str) \
            else type(spec.connector).__qualname__
        self.group = f"{ctx.namespace}.sink.{spec.name}"
        # The replay lane: `streamflow dlq replay` re-injects this sink's dead letters here.
        self.topics = [ctx.topic(spec.asset), replay_topic(ctx.namespace, spec.name)]
        self.kind = "sink"
        # A connector may describe its target for the write span (db.* for SQL sinks).
        self._write_attrs: dict[str, AttrValue] = {
            "streamflow.sink": spec.name, "streamflow.connector": self.connector,
            "streamflow.sink.location": sink.location,
            **dict(getattr(sink, "trace_attributes", None) or {}),
        }

    async def handle(self, msgs: list[Message]) -> list[Message]:
        tr = self.ctx.tracing
        records: list[SinkRecord] = []
        delivered: list[tuple[Message, Arrival, RecSpan | None]] = []
        spans: list[RecSpan | None] = []
        dead: list[OutMessage] = []
        for m in msgs:
            arr = Arrival.from_message(m.key, m.value, m.headers)
            proc = tr.start_child(
                f"process {m.topic}", arr.traceparent, SpanKind.CONSUMER,
                partial(tr.process_attributes, m.topic, m.partition, m.offset, self.group, m.key))
            spans.append(proc)
            try:
                value = orjson.loads(m.value)
                if not isinstance(value, dict):
                    raise TypeError(f"expected a JSON object, got {type(value).__name__}")
            except (orjson.JSONDecodeError, TypeError) as e:
                reason = f"{m.topic}@{m.partition}:{m.offset}: undecodable record: {e}"
                _fail(proc, e, reason)
                dead.append(self._dead(reason, m, arr, proc, spans, e))
                continue
            write = tr.start_child(f"write {self.spec.name}", proc, SpanKind.INTERNAL,
                                   self._write_attrs.copy)
            spans.append(write)
            key = m.key.decode("utf-8", "replace") if m.key is not None else None
            records.append(SinkRecord(key, arr.arrival_id, arr.partition, value))
            delivered.append((m, arr, write))
        if records:
            try:
                await self.sink.write(records)
                await self.sink.flush()
            except Exception as e:  # the connector gave up (after its own retries): park the batch
                reason = f"sink {self.name!r} failed: {type(e).__name__}: {e}"
                for m, arr, wspan in delivered:
                    _fail(wspan, e, reason)
                    dead.append(self._dead(reason, m, arr, wspan, spans, e))
                records = []
        await self.ctx.transport.publish(dead)
        _end(reversed(spans))
        self.ctx.counters.records_out += len(records)
        mt = self.ctx.metrics
        mt.add(mt.arrivals_in, (self.spec.asset.name, self.name), len(msgs))
        mt.add(mt.sink_writes, (self.name,), len(records))
        return msgs


def _transactional(sub: Subscription) -> TypeGuard[TransactionalSubscription]:
    return sub.exactly_once


def replay_topic(namespace: str, consumer: str) -> str:
    """Where a stage's retries and a stage's or sink's replayed dead letters go."""
    return f"{namespace}.retry.{consumer}"


def connector_context(
    name: str, asset: Asset[Any], state_dir: str, namespace: str, pipeline: str
) -> ConnectorContext:
    return ConnectorContext(name=name, asset=asset.name, state_dir=state_dir,
                            namespace=namespace, pipeline=pipeline)
