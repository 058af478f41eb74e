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

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.sdk.trace.id_generator import RandomIdGenerator
from opentelemetry.trace import Link, NonRecordingSpan, Span, SpanContext, SpanKind, TraceFlags

log = logging.getLogger("streamflow.telemetry")

AttrValue = str | int | float | bool

_UNSET = object()


class TelemetryError(RuntimeError):
    pass


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


class PrimedIds(RandomIdGenerator):
    """Lets a late root span take the ids an unsampled record was already given, so a record
    that fails after being left unsampled gets its spans under the trace id it carries."""

    def __init__(self) -> None:
        self.trace_id: int | None = None
        self.span_id: int | None = None

    def generate_trace_id(self) -> int:
        tid, self.trace_id = self.trace_id, None
        return tid if tid is not None else super().generate_trace_id()

    def generate_span_id(self) -> int:
        sid, self.span_id = self.span_id, None
        return sid if sid is not None else super().generate_span_id()


class Tracing:
    """Creates the spans of a record's path; every method is a cheap no-op when disabled.

    Sampling is decided here, from the header bytes, so an unsampled record never touches the
    SDK; ``tracer`` records whatever it is asked to (its sampler is always-on).
    """

    def __init__(self, tracer: trace.Tracer | None, messaging_system: str,
                 sampling: Sampling | None = None, ids: PrimedIds | None = None) -> None:
        self.tracer = tracer
        self.system = messaging_system
        self.sampling = sampling or Sampling()
        self.ids = ids

    @property
    def enabled(self) -> bool:
        return self.tracer is not None

    def _decide(self) -> bool:
        r = self.sampling.ratio
        return r >= 1.0 or (r > 0.0 and random.random() < r)

    def start_root(self, name: str, attributes: Mapping[str, AttrValue]
                   ) -> tuple[Span | None, bytes | None]:
        """A new trace for a record entering the system: its span if sampled, and its
        traceparent either way (an unsampled one costs a random number, not an SDK call)."""
        if self.tracer is None:
            return None, None
        if self._decide():
            span = self.tracer.start_span(name, context=Context(), attributes=attributes)
            return span, format_traceparent(span.get_span_context())
        return None, b"00-%032x-%016x-00" % (random.getrandbits(128) or 1,
                                              random.getrandbits(64) or 1)

    def start_consumer_root(self, name: str, incoming: bytes,
                            attributes: Mapping[str, AttrValue]) -> tuple[Span | None, bytes]:
        """A record that arrived with a traceparent (from outside): continue that trace."""
        sampled = is_sampled(incoming) if self.sampling.parent_based else self._decide()
        if not sampled:
            return None, incoming[:53] + b"%02x" % (int(incoming[53:55], 16) & ~1)
        span = self.start_child(name, _with_sampled(incoming), SpanKind.CONSUMER, attributes)
        return span, traceparent_of(span, incoming) or incoming

    def start_child(
        self,
        name: str,
        parent: Span | bytes | None,
        kind: SpanKind = SpanKind.INTERNAL,
        attributes: Mapping[str, AttrValue] | Callable[[], Mapping[str, AttrValue]] | None = None,
        links: Sequence[bytes] = (),
        start_time: int | None = None,
    ) -> Span | None:
        """A span under ``parent`` (a live span or a traceparent header), or None if unsampled.

        ``attributes`` may be a callable so that an unsampled record never builds them.
        """
        if self.tracer is None or parent is None:
            return None
        if isinstance(parent, bytes):
            if not is_sampled(parent):
                return None
            sc = parse_traceparent(parent)
            if sc is None:
                return None
            ctx = trace.set_span_in_context(NonRecordingSpan(sc))
        else:
            if not parent.get_span_context().trace_flags.sampled:
                return None
            ctx = trace.set_span_in_context(parent)
        span_links = [Link(sc) for sc in map(parse_traceparent, links) if sc is not None]
        attrs = attributes() if callable(attributes) else attributes
        return self.tracer.start_span(
            name, context=ctx, kind=kind, attributes=attrs, links=span_links,
            start_time=start_time,
        )

    def start_failure(
        self,
        name: str,
        parent: bytes | None,
        kind: SpanKind = SpanKind.INTERNAL,
        attributes: Mapping[str, AttrValue] | Callable[[], Mapping[str, AttrValue]] | None = None,
        root: bool = False,
        start_time: int | None = None,
    ) -> Span | None:
        """A span for a failing record even if it was not sampled, under the trace id its
        traceparent carries: failures stay visible at any sampling ratio.

        ``root`` recreates the record's unsampled root span itself (same trace and span id).
        """
        if self.tracer is None or parent is None:
            return None
        sc = parse_traceparent(parent)
        if sc is None:
            return None
        if root and self.ids is not None:
            self.ids.trace_id, self.ids.span_id = sc.trace_id, sc.span_id
            attrs = attributes() if callable(attributes) else attributes
            return self.tracer.start_span(name, context=Context(), kind=kind, attributes=attrs,
                                          start_time=start_time)
        return self.start_child(name, _with_sampled(parent), kind, attributes,
                                start_time=start_time)

    def unsampled_context(self, parent: bytes | None) -> AbstractContextManager[object]:
        """Make an unsampled record's context current, so spans that user code opens through
        the OpenTelemetry API follow its decision instead of starting traces of their own."""
        sc = parse_traceparent(parent) if self.tracer is not None and parent else None
        if sc is None:
            return contextlib.nullcontext()
        return trace.use_span(NonRecordingSpan(sc), end_on_exit=False)

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


def traceparent_of(span: Span | None, fallback: bytes | None = None) -> bytes | None:
    """The header to write for a message sent under ``span``; unsampled context passes through."""
    if span is None:
        return fallback
    return format_traceparent(span.get_span_context())
