"""StreamFlow's own recorded spans: plain slotted objects, encoded straight to OTLP/JSON.

The OpenTelemetry SDK spends about 50 µs per recorded span here, mostly cleaning and copying
attributes (``BoundedAttributes``). StreamFlow builds its span attributes itself from known
types, so it does not need that. A ``RecSpan`` costs a few µs and is exported as a plain dict.
Spans that user code opens through the OpenTelemetry API still go through the SDK, as children
of the run span: the run's context is made current as a ``NonRecordingSpan``.
"""

from __future__ import annotations

import random
import time
import traceback
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import orjson
from opentelemetry.trace import NonRecordingSpan, SpanContext, SpanKind, TraceFlags

from streamflow.model import withheld

AttrValue = str | int | float | bool

STATUS_ERROR = 2
_dumps = orjson.dumps


class RecSpan:
    """One recorded span; ``end`` hands it to the exporter queue."""

    __slots__ = ("attributes", "end_ns", "events", "kind", "links", "name", "parent_id",
                 "sink", "span_id", "start_ns", "status_code", "status_message", "trace_id")

    def __init__(self, sink: Callable[[RecSpan], None], name: str, trace_id: int, span_id: int,
                 parent_id: int | None, kind: SpanKind, attributes: dict[str, AttrValue],
                 links: list[tuple[int, int]], start_ns: int | None = None) -> None:
        self.sink = sink
        self.name, self.kind = name, kind
        self.trace_id, self.span_id, self.parent_id = trace_id, span_id, parent_id
        self.attributes = attributes
        self.links = links
        self.events: list[tuple[str, int, dict[str, AttrValue]]] = []
        self.status_code, self.status_message = 0, ""
        self.start_ns = start_ns if start_ns is not None else time.time_ns()
        self.end_ns = 0

    def traceparent(self) -> bytes:
        return b"00-%032x-%016x-01" % (self.trace_id, self.span_id)

    def context(self) -> NonRecordingSpan:
        """This span as the current context for code that uses the OpenTelemetry API."""
        return NonRecordingSpan(SpanContext(self.trace_id, self.span_id, is_remote=False,
                                            trace_flags=TraceFlags(TraceFlags.SAMPLED)))

    def set_attribute(self, key: str, value: AttrValue) -> None:
        self.attributes[key] = value

    def add_event(self, name: str, attributes: dict[str, AttrValue]) -> None:
        self.events.append((name, time.time_ns(), attributes))

    def fail(self, message: str, exc: BaseException | None = None) -> None:
        """ERROR status with ``message``; the exception, if any, as an ``exception`` event;
        the values of the records' sensitive fields withheld from both."""
        self.status_code, self.status_message = STATUS_ERROR, withheld(message)
        if exc is not None:
            self.events.append(("exception", time.time_ns(), {
                "exception.type": type(exc).__qualname__,
                "exception.message": withheld(str(exc)),
                "exception.stacktrace": withheld("".join(traceback.format_exception(exc))),
            }))

    def end(self) -> None:
        if not self.end_ns:
            self.end_ns = time.time_ns()
            self.sink(self)


def new_ids() -> tuple[int, int]:
    return random.getrandbits(128) or 1, random.getrandbits(64) or 1


def new_span_id() -> int:
    return random.getrandbits(64) or 1


def _value(v: Any) -> dict[str, Any]:
    if isinstance(v, str):
        return {"stringValue": v}
    if isinstance(v, bool):
        return {"boolValue": v}
    if isinstance(v, int):
        return {"intValue": str(v)}
    if isinstance(v, float):
        return {"doubleValue": v}
    if isinstance(v, Sequence):
        return {"arrayValue": {"values": [_value(x) for x in v]}}
    return {"stringValue": str(v)}


def otlp_attributes(attrs: Mapping[str, Any] | None) -> list[dict[str, Any]]:
    return [{"key": k, "value": _value(v)} for k, v in (attrs or {}).items()]


def _attr_json(k: str, v: Any) -> bytes:
    if isinstance(v, str):
        return b'{"key":%b,"value":{"stringValue":%b}}' % (_dumps(k), _dumps(v))
    if isinstance(v, bool):
        return b'{"key":%b,"value":{"boolValue":%b}}' % (_dumps(k), b"true" if v else b"false")
    if isinstance(v, int):
        return b'{"key":%b,"value":{"intValue":"%d"}}' % (_dumps(k), v)
    return _dumps({"key": k, "value": _value(v)})


def _attrs_json(attrs: Mapping[str, Any]) -> bytes:
    return b",".join([_attr_json(k, v) for k, v in attrs.items()])


def rec_span_json(s: RecSpan) -> bytes:
    """One span as OTLP/JSON bytes. Built as bytes, not dicts: bytes are not tracked by the
    garbage collector, and the dict version spent three quarters of its time in collections."""
    out = b'{"traceId":"%032x","spanId":"%016x","name":%b,"kind":%d,"startTimeUnixNano":"%d",' \
          b'"endTimeUnixNano":"%d","attributes":[%b]' % (
              s.trace_id, s.span_id, _dumps(s.name), s.kind.value + 1, s.start_ns, s.end_ns,
              _attrs_json(s.attributes))
    # (the API counts span kinds from INTERNAL=0, OTLP from UNSPECIFIED=0)
    if s.parent_id is not None:
        out += b',"parentSpanId":"%016x"' % s.parent_id
    if s.events:
        out += b',"events":[%b]' % b",".join([
            b'{"name":%b,"timeUnixNano":"%d","attributes":[%b]}' % (_dumps(n), t, _attrs_json(a))
            for n, t, a in s.events])
    if s.links:
        out += b',"links":[%b]' % b",".join([
            b'{"traceId":"%032x","spanId":"%016x"}' % link for link in s.links])
    if s.status_code:
        out += b',"status":{"code":%d,"message":%b}' % (s.status_code, _dumps(s.status_message))
    return out + b"}"


def end_spans(spans: Iterable[RecSpan | None]) -> None:
    """End a batch's spans (children first when given reversed); None is an unsampled one."""
    for s in spans:
        if s is not None:
            s.end()


def fail_span(span: RecSpan | None, exc: BaseException | None, message: str) -> None:
    """Mark a span failed, if the record is sampled at all."""
    if span is not None:
        span.fail(message, exc)
