"""Tracing for records: one trace per record across every hop, and nothing at all when off.

Trace context travels as a W3C ``traceparent`` header. The header's flags byte decides: an
unsampled record never touches the OpenTelemetry SDK (its header is passed on untouched),
because even a non-recording SDK span costs several times the rest of the pipeline.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from opentelemetry import trace
from opentelemetry.context import Context
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


class Tracing:
    """Creates the spans of a record's path; every method is a cheap no-op when disabled."""

    def __init__(self, tracer: trace.Tracer | None, messaging_system: str) -> None:
        self.tracer = tracer
        self.system = messaging_system

    @property
    def enabled(self) -> bool:
        return self.tracer is not None

    def start_root(self, name: str, attributes: Mapping[str, AttrValue]) -> Span | None:
        """A new trace for a record entering the system (subject to the configured sampler)."""
        if self.tracer is None:
            return None
        return self.tracer.start_span(name, context=Context(), attributes=attributes)

    def start_child(
        self,
        name: str,
        parent: Span | bytes | None,
        kind: SpanKind = SpanKind.INTERNAL,
        attributes: Mapping[str, AttrValue] | Callable[[], Mapping[str, AttrValue]] | None = None,
        links: Sequence[bytes] = (),
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
            name, context=ctx, kind=kind, attributes=attrs, links=span_links
        )

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


def traceparent_of(span: Span | None, fallback: bytes | None = None) -> bytes | None:
    """The header to write for a message sent under ``span``; unsampled context passes through."""
    if span is None:
        return fallback
    return format_traceparent(span.get_span_context())


def configure_tracing(default_service: str = "streamflow") -> Any | None:
    """Install an SDK TracerProvider when the standard OTEL_* variables ask for export.

    Returns the provider (so the caller can flush it) or None when tracing stays off.
    """
    if os.environ.get("OTEL_SDK_DISABLED", "").lower() == "true":
        return None
    exporter_name = os.environ.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    endpoint = os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or os.environ.get(
        "OTEL_EXPORTER_OTLP_ENDPOINT"
    )
    if exporter_name == "none" or (not exporter_name and not endpoint):
        return None
    from opentelemetry.sdk.resources import SERVICE_NAME, Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import (
        BatchSpanProcessor,
        ConsoleSpanExporter,
        SpanExporter,
    )

    exporter: SpanExporter
    exporter = ConsoleSpanExporter() if exporter_name == "console" else _otlp_exporter()
    resource = Resource.create(
        {} if os.environ.get("OTEL_SERVICE_NAME") else {SERVICE_NAME: default_service}
    )
    provider = TracerProvider(resource=resource)  # sampler from OTEL_TRACES_SAMPLER(_ARG)
    provider.add_span_processor(BatchSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    return provider


def _otlp_exporter() -> Any:
    protocol = (
        os.environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
        or os.environ.get("OTEL_EXPORTER_OTLP_PROTOCOL")
        or "http/protobuf"
    ).strip()
    if protocol == "http/protobuf":
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        return OTLPSpanExporter()
    if protocol == "grpc":
        try:
            from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (
                OTLPSpanExporter as GrpcExporter,
            )
        except ImportError as e:
            raise TelemetryError(
                "OTEL_EXPORTER_OTLP_PROTOCOL=grpc needs the gRPC exporter: "
                "pip install 'streamflow[grpc]' (or use http/protobuf on port 4318)"
            ) from e
        return GrpcExporter()
    raise TelemetryError(
        f"OTEL_EXPORTER_OTLP_PROTOCOL={protocol!r} is not supported; "
        "use 'http/protobuf' (default, port 4318) or 'grpc' (port 4317)"
    )


def shutdown_tracing(provider: Any | None) -> None:
    if provider is not None:
        provider.force_flush()
        provider.shutdown()
