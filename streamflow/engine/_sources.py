"""The source loop: read records, validate them against the asset's contract, publish
arrivals (and dead letters), then acknowledge the batch to the connector."""

from __future__ import annotations

from functools import partial
from typing import Any

from opentelemetry.trace import SpanKind

from streamflow.connectors import Source, SourceRecord
from streamflow.model import (
    DeadLetter,
    OutMessage,
    SourceSpec,
    check_record,
    dead_letter_message,
    origin_text,
    record_text,
    reject_id,
    source_arrival,
    source_arrival_id,
    too_large,
    use_redaction,
)
from streamflow.observability import (
    AttrValue,
    RecSpan,
    end_spans,
    fail_span,
    parse_traceparent,
    traceparent_of,
)

from ._context import Ctx
from ._redact import names_of, source_redaction


class SourceRunner:
    def __init__(self, spec: SourceSpec, source: Source, ctx: Ctx) -> None:
        self.spec, self.source, self.ctx = spec, source, ctx

    async def run(self) -> None:
        asset = self.spec.asset
        tr = self.ctx.tracing
        topic = self.ctx.topic(asset)
        async for batch in self.source.read():
            use_redaction(source_redaction(asset, batch))  # this source's task, batch by batch
            out: list[OutMessage] = []
            spans: list[RecSpan | None] = []
            for rec in batch.records:
                root, root_tp = self._read_span(rec)
                spans.append(root)
                arrival_id = source_arrival_id(asset, rec)
                model = check_record(asset, rec)
                if isinstance(model, str):
                    self._refuse(rec, model, arrival_id, root, root_tp, spans, out)
                    continue
                key_b = asset.key_bytes(model)
                arr = source_arrival(asset, arrival_id, model, self.spec.name, "live", key=key_b)
                if len(arr.value) > self.ctx.max_record_bytes:  # the broker would refuse it
                    reason = too_large(len(arr.value), self.ctx.max_record_bytes)
                    self._refuse(rec, reason, arrival_id, root, root_tp, spans, out)
                    continue
                send = None if root is None else tr.start_child(
                    f"send {topic}", root, SpanKind.PRODUCER,
                    partial(tr.send_attributes, topic, key_b))
                spans.append(send)
                arr.traceparent = traceparent_of(send, root_tp)
                out.append(arr.message(topic))
            for rej in batch.rejects:
                root, tp = tr.start_root(f"read {self.spec.name}",
                                         {"streamflow.source": self.spec.name})
                root = root or tr.start_failure(f"read {self.spec.name}", tp,
                                                attributes={"streamflow.source": self.spec.name},
                                                root=True)
                spans.append(root)
                fail_span(root, None, rej.reason)
                out.append(self.dead_letter(rej.reason, rej.origin, rej.payload,
                                            reject_id(asset, rej.origin), root, spans, out))
            await self.ctx.transport.publish(out)
            end_spans(reversed(spans))
            # Counted from this batch's own messages: sources run concurrently.
            batch.dead_lettered = sum(1 for o in out if o.topic == self.ctx.dlq_topic)
            mt = self.ctx.metrics
            mt.add(mt.arrivals_out, (asset.name,), sum(1 for o in out if o.topic == topic))
            await self.source.ack(batch)
            c = self.ctx.counters
            c.records_in += len(batch.records) + len(batch.rejects)

    def _refuse(self, rec: SourceRecord, why: str, arrival_id: str, root: RecSpan | None,
                root_tp: bytes | None, spans: list[RecSpan | None],
                out: list[OutMessage]) -> None:
        """Dead-letter a record that failed its contract or is too large to publish."""
        reason = f"{origin_text(rec.origin)}: {why}"
        root = root or self._failed_root(rec, root_tp, spans)
        fail_span(root, None, reason)
        out.append(self.dead_letter(reason, rec.origin, record_text(rec.data), arrival_id, root,
                                    spans, out))

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

    def dead_letter(self, reason: str, origin: dict[str, Any], payload: str, arrival_id: str,
                    parent: RecSpan | None, spans: list[RecSpan | None],
                    spill: list[OutMessage]) -> OutMessage:
        """The dead letter; a payload too large for one goes whole to ``spill`` (the side
        store, published with the batch)."""
        tr = self.ctx.tracing
        send = tr.start_child(f"send {self.ctx.dlq_topic}", parent, SpanKind.PRODUCER,
                              partial(tr.send_attributes, self.ctx.dlq_topic, arrival_id.encode()))
        spans.append(send)
        self.ctx.counters.dead_lettered += 1
        mt = self.ctx.metrics
        mt.add(mt.dead_letters, ("source", self.spec.name))
        mt.failed("source", self.spec.name, reason)
        dl = DeadLetter(reason, self.spec.name, origin, payload, arrival_id=arrival_id,
                        kind="source", sensitive=names_of([self.spec.asset]))
        return dead_letter_message(self.ctx.dlq_topic, dl, traceparent_of(send), spill)
