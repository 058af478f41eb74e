"""Tracing for records: one trace per record across every hop, and nothing at all when off.

Trace context travels as a W3C ``traceparent`` header. The header's flags byte decides: an
unsampled record never touches the OpenTelemetry SDK (its header is passed on untouched),
because even a non-recording SDK span costs several times the rest of the pipeline.
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass

from opentelemetry import context, trace
from opentelemetry.context import Context
from opentelemetry.trace import NonRecordingSpan, SpanContext, SpanKind, TraceFlags

from streamflow.errors import TelemetryError

from ._spans import AttrValue, RecSpan, new_ids, new_span_id

log = logging.getLogger("streamflow.telemetry")


def parse_traceparent(value: bytes | None) -> SpanContext | None:
    """A remote span context from a ``traceparent`` header, or None if absent or malformed."""
    if value is None or len(value) != 55 or value[2:3] != b"-":
        return None
    try:
        trace_id = int(value[3:35], 16)
        span_id = int(value[36:52], 16)
        flags = int(value[53:55], 16)
    except ValueError:
        return None
    if trace_id == 0 or span_id == 0:
        return None
    return SpanContext(trace_id, span_id, is_remote=True, trace_flags=TraceFlags(flags))


def is_sampled(value: bytes | None) -> bool:
    """Read the sampled bit straight from the header bytes: no SDK call, no allocation."""
    return value is not None and len(value) == 55 and value[54] in b"13579bdfBDF"


def trace_id_of(value: bytes | None) -> str | None:
    """The trace id (32 hex digits) of a well-formed traceparent, for the ledger and lookups."""
    if value is None or len(value) != 55:
        return None
    return value[3:35].decode("ascii", "replace")


def format_traceparent(ctx: SpanContext) -> bytes:
    return b"00-%032x-%016x-%02x" % (ctx.trace_id, ctx.span_id, int(ctx.trace_flags))


@dataclass(frozen=True, slots=True)
class Sampling:
    """Which records get traced: ``OTEL_TRACES_SAMPLER`` (+ ``_ARG``) read once, decided here.

    ``ratio`` applies to records that start a trace; ``parent_based`` makes a record arriving
    with a traceparent (the Kafka source) keep its producer's decision instead.
    """

    ratio: float = 1.0
    parent_based: bool = True

    @classmethod
    def from_env(cls) -> Sampling:
        name = os.environ.get("OTEL_TRACES_SAMPLER", "parentbased_always_on").strip().lower()
        arg = os.environ.get("OTEL_TRACES_SAMPLER_ARG", "").strip()
        parent_based = name.startswith("parentbased_")
        base = name.removeprefix("parentbased_")
        if base == "always_on":
            return cls(1.0, parent_based)
        if base == "always_off":
            return cls(0.0, parent_based)
        if base == "traceidratio":
            try:
                ratio = float(arg) if arg else 1.0
            except ValueError:
                ratio = -1.0
            if not 0.0 <= ratio <= 1.0:
                raise TelemetryError(
                    f"OTEL_TRACES_SAMPLER_ARG={arg!r} is not a ratio between 0 and 1")
            return cls(ratio, parent_based)
        raise TelemetryError(
            f"OTEL_TRACES_SAMPLER={name!r} is not supported; use always_on, always_off, "
            "traceidratio or their parentbased_ forms (with OTEL_TRACES_SAMPLER_ARG=0.01)")


Attrs = Mapping[str, AttrValue] | Callable[[], dict[str, AttrValue]] | None


def ids_of(tp: bytes | None) -> tuple[int, int] | None:
    """(trace id, span id) of a well-formed traceparent, without building a SpanContext."""
    if tp is None or len(tp) != 55 or tp[2:3] != b"-":
        return None
    try:
        tid, sid = int(tp[3:35], 16), int(tp[36:52], 16)
    except ValueError:
        return None
    return (tid, sid) if tid and sid else None


def _attrs(attributes: Attrs) -> dict[str, AttrValue]:
    if attributes is None:
        return {}
    if callable(attributes):
        return attributes()
    return attributes if isinstance(attributes, dict) else dict(attributes)


_NOT_SAMPLED = TraceFlags(TraceFlags.DEFAULT)


class _Attached:
    """Makes a context current for a ``with`` block: cheaper than ``trace.use_span``."""

    __slots__ = ("ctx", "token")

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.token: object = None

    def __enter__(self) -> None:
        self.token = context.attach(self.ctx)

    def __exit__(self, *exc: object) -> None:
        context.detach(self.token)  # type: ignore[arg-type]


class Tracing:
    """Creates the spans of a record's path; every method is a cheap no-op when disabled.

    Sampling is decided here, from the header bytes, so an unsampled record never touches the
    SDK. Recorded spans are ``RecSpan``s handed to ``sink`` when they end.
    """

    def __init__(self, sink: Callable[[RecSpan], None] | None, messaging_system: str,
                 sampling: Sampling | None = None) -> None:
        self.sink = sink
        self.system = messaging_system
        self.sampling = sampling or Sampling()
        # For runs without a traceparent: any unsampled context drops their spans.
        tid, sid = new_ids()
        self._unsampled = trace.set_span_in_context(NonRecordingSpan(SpanContext(
            tid, sid, is_remote=True, trace_flags=TraceFlags(TraceFlags.DEFAULT))))

    @property
    def enabled(self) -> bool:
        return self.sink is not None

    def _decide(self) -> bool:
        r = self.sampling.ratio
        return r >= 1.0 or (r > 0.0 and random.random() < r)

    def start_root(self, name: str, attributes: Attrs) -> tuple[RecSpan | None, bytes | None]:
        """A new trace for a record entering the system: its span if sampled, and its
        traceparent either way (an unsampled one costs two random numbers)."""
        if self.sink is None:
            return None, None
        tid, sid = new_ids()
        if self._decide():
            span = RecSpan(self.sink, name, tid, sid, None, SpanKind.INTERNAL, _attrs(attributes),
                           [])
            return span, span.traceparent()
        return None, b"00-%032x-%016x-00" % (tid, sid)

    def start_consumer_root(self, name: str, incoming: bytes, attributes: Attrs
                            ) -> tuple[RecSpan | None, bytes]:
        """A record that arrived with a traceparent (from outside): continue that trace."""
        sampled = is_sampled(incoming) if self.sampling.parent_based else self._decide()
        if not sampled:
            return None, incoming[:53] + b"%02x" % (int(incoming[53:55], 16) & ~1)
        span = self.start_child(name, _with_sampled(incoming), SpanKind.CONSUMER, attributes)
        return span, traceparent_of(span, incoming) or incoming

    def start_child(
        self,
        name: str,
        parent: RecSpan | bytes | None,
        kind: SpanKind = SpanKind.INTERNAL,
        attributes: Attrs = None,
        links: Sequence[bytes] = (),
        start_time: int | None = None,
    ) -> RecSpan | None:
        """A span under ``parent`` (a live span or a traceparent header), or None if unsampled.

        ``attributes`` may be a callable so that an unsampled record never builds them.
        """
        if self.sink is None or parent is None:
            return None
        if isinstance(parent, bytes):
            if not is_sampled(parent):
                return None
            ids = ids_of(parent)
            if ids is None:
                return None
            tid, pid = ids
        else:
            tid, pid = parent.trace_id, parent.span_id
        span_links = [i for i in map(ids_of, links) if i is not None]
        return RecSpan(self.sink, name, tid, new_span_id(), pid, kind, _attrs(attributes),
                       span_links, start_time)

    def start_failure(
        self,
        name: str,
        parent: bytes | None,
        kind: SpanKind = SpanKind.INTERNAL,
        attributes: Attrs = None,
        root: bool = False,
        start_time: int | None = None,
    ) -> RecSpan | None:
        """A span for a failing record even if it was not sampled, under the trace id its
        traceparent carries: failures stay visible at any sampling ratio.

        ``root`` recreates the record's unsampled root span itself (same trace and span id).
        """
        ids = ids_of(parent)
        if ids is None or self.sink is None:
            return None
        tid, sid = ids
        if root:
            return RecSpan(self.sink, name, tid, sid, None, kind, _attrs(attributes), [],
                           start_time)
        return RecSpan(self.sink, name, tid, new_span_id(), sid, kind, _attrs(attributes), [],
                       start_time)

    def run_context(self, run: RecSpan | None, parent: bytes | None = None
                    ) -> AbstractContextManager[object]:
        """The context user code runs in: the run span if sampled, so its OpenTelemetry spans
        are children of the run. Otherwise the record's unsampled context: spans opened under
        it are dropped, and log lines still carry the record's trace id, the one under which
        a failure of the run is exported."""
        if run is not None:
            return _Attached(trace.set_span_in_context(run.context()))
        if self.sink is None:
            return contextlib.nullcontext()
        ids = ids_of(parent)
        if ids is None:
            return _Attached(self._unsampled)
        return _Attached(trace.set_span_in_context(NonRecordingSpan(SpanContext(
            ids[0], ids[1], is_remote=True, trace_flags=_NOT_SAMPLED))))

    def send_attributes(self, topic: str, key: bytes | None) -> dict[str, AttrValue]:
        a: dict[str, AttrValue] = {
            "messaging.system": self.system,
            "messaging.operation.name": "send",
            "messaging.operation.type": "send",
            "messaging.destination.name": topic,
        }
        if key is not None:
            a["messaging.kafka.message.key"] = key.decode("utf-8", "replace")
        return a

    def process_attributes(
        self, topic: str, partition: int, offset: int, group: str, key: bytes | None
    ) -> dict[str, AttrValue]:
        a: dict[str, AttrValue] = {
            "messaging.system": self.system,
            "messaging.operation.name": "process",
            "messaging.operation.type": "process",
            "messaging.destination.name": topic,
            "messaging.destination.partition.id": str(partition),
            "messaging.kafka.offset": offset,
            "messaging.consumer.group.name": group,
        }
        if key is not None:
            a["messaging.kafka.message.key"] = key.decode("utf-8", "replace")
        return a


def _with_sampled(tp: bytes) -> bytes:
    return tp[:53] + b"%02x" % (int(tp[53:55], 16) | 1) if len(tp) == 55 else tp


def traceparent_of(span: RecSpan | None, fallback: bytes | None = None) -> bytes | None:
    """The header to write for a message sent under ``span``; unsampled context passes through."""
    if span is None:
        return fallback
    return span.traceparent()
