"""The sink loop: deliver a topic's arrivals to a connector; a batch the connector
gives up on is dead-lettered. A ``TopicSink`` on the worker's own Kafka, exactly once, has its
records produced inside the transaction that commits their input instead."""

from __future__ import annotations

import logging
from functools import partial

import orjson
from opentelemetry.trace import SpanKind

from streamflow.connectors import Sink, SinkRecord, TopicSink, same_cluster
from streamflow.model import (
    Arrival,
    DeadLetterKind,
    Message,
    OutMessage,
    SinkSpec,
    redacting,
    replay_topic,
    sink_group,
)
from streamflow.observability import AttrValue, RecSpan, end_spans, fail_span, traceparent_of

from ._consumer import _Consumer
from ._context import Ctx
from ._redact import batch_redaction, names_of

log = logging.getLogger("streamflow.sink")


class SinkRunner(_Consumer):
    def __init__(self, spec: SinkSpec, sink: Sink, ctx: Ctx) -> None:
        super().__init__(ctx)
        self.spec, self.sink = spec, sink
        self.name = spec.name
        self.sensitive = names_of([spec.asset])
        self.connector = spec.connector if isinstance(spec.connector, str) \
            else type(spec.connector).__qualname__
        self.group = sink_group(ctx.namespace, spec.name)
        # The replay lane: `streamflow dlq replay` re-injects this sink's dead letters here.
        self.topics = [ctx.topic(spec.asset), replay_topic(ctx.namespace, spec.name)]
        self.kind: DeadLetterKind = "sink"
        # A connector may describe its target for the write span (db.* for SQL sinks).
        self._write_attrs: dict[str, AttrValue] = {
            "streamflow.sink": spec.name, "streamflow.connector": self.connector,
            "streamflow.sink.location": sink.location,
            **dict(getattr(sink, "trace_attributes", None) or {}),
        }
        self._in_txn: TopicSink | None = None

    async def open(self) -> None:
        await super().open()
        sink, own = self.sink, self.ctx.kafka_bootstrap
        if not (isinstance(sink, TopicSink) and self.sub is not None and self.sub.exactly_once):
            return
        if own is not None and same_cluster(sink.cluster, own):
            self._in_txn = sink
            log.info("sink %s: writes inside the input's transaction", self.name)
        else:
            log.info("sink %s: writes at least once: its cluster %r is not the worker's (%r); "
                     "name the same host:port to write exactly once", self.name, sink.cluster, own)

    async def handle(self, msgs: list[Message]) -> list[Message]:
        asset = self.spec.asset
        with redacting(batch_redaction(msgs, {asset.name: asset}, {})):
            return await self._handle(msgs)

    async def _handle(self, msgs: list[Message]) -> list[Message]:
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
                what = "tombstone (a null value): there is no record to write" if not m.value \
                    else f"undecodable record: {e}"
                reason = f"{m.topic}@{m.partition}:{m.offset}: {what}"
                fail_span(proc, e, reason)
                dead.append(self.dead_letter(reason, m, arr, proc, spans, e))
                continue
            write = tr.start_child(f"write {self.spec.name}", proc, SpanKind.INTERNAL,
                                   self._write_attrs.copy)
            spans.append(write)
            key = m.key.decode("utf-8", "replace") if m.key is not None else None
            records.append(SinkRecord(key, arr.arrival_id, arr.partition, value,
                                      traceparent_of(write, arr.traceparent)))
            delivered.append((m, arr, write))
        if records:
            try:
                if self._in_txn is not None:  # published below, in the input's transaction
                    dead.extend(OutMessage(t.topic, t.value, t.key, t.headers)
                                for t in self._in_txn.topic_records(records))
                else:
                    await self.sink.write(records)
                    await self.sink.flush()
            except Exception as e:  # the connector gave up (after its own retries): park the batch
                reason = f"sink {self.name!r} failed: {type(e).__name__}: {e}"
                for m, arr, wspan in delivered:
                    fail_span(wspan, e, reason)
                    dead.append(self.dead_letter(reason, m, arr, wspan, spans, e))
                records = []
        await self.ctx.transport.publish(dead)
        end_spans(reversed(spans))
        self.ctx.counters.records_out += len(records)
        mt = self.ctx.metrics
        mt.add(mt.arrivals_in, (self.spec.asset.name, self.name), len(msgs))
        mt.add(mt.sink_writes, (self.name,), len(records))
        return msgs

