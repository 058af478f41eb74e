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
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from opentelemetry.trace import NonRecordingSpan, SpanContext, SpanKind, TraceFlags

AttrValue = str | int | float | bool

STATUS_ERROR = 2


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

    def fail(self, message: str, exc: BaseException | None = None) -> None:
        """ERROR status with ``message``; the exception, if any, as an ``exception`` event."""
        self.status_code, self.status_message = STATUS_ERROR, message
        if exc is not None:
            self.events.append(("exception", time.time_ns(), {
                "exception.type": type(exc).__qualname__,
                "exception.message": str(exc),
                "exception.stacktrace": "".join(traceback.format_exception(exc)),
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


def encode_rec_span(s: RecSpan) -> dict[str, Any]:
    out: dict[str, Any] = {
        "traceId": f"{s.trace_id:032x}", "spanId": f"{s.span_id:016x}", "name": s.name,
        "kind": s.kind.value + 1,  # the API counts from INTERNAL=0, OTLP from UNSPECIFIED=0
        "startTimeUnixNano": str(s.start_ns), "endTimeUnixNano": str(s.end_ns),
        "attributes": otlp_attributes(s.attributes),
    }
    if s.parent_id is not None:
        out["parentSpanId"] = f"{s.parent_id:016x}"
    if s.events:
        out["events"] = [{"name": n, "timeUnixNano": str(t), "attributes": otlp_attributes(a)}
                         for n, t, a in s.events]
    if s.links:
        out["links"] = [{"traceId": f"{t:032x}", "spanId": f"{i:016x}"} for t, i in s.links]
    if s.status_code:
        out["status"] = {"code": s.status_code, "message": s.status_message}
    return out
