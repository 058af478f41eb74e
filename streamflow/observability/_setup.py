"""Installing tracing for a worker from the standard ``OTEL_*`` variables.

StreamFlow's own spans (``RecSpan``, sampled by ``Tracing`` from the record's traceparent) and
the spans that user code opens through the global OpenTelemetry API share one span processor.
User spans come from a parent-based provider, so they follow the record they were opened
for. The global provider can be set only once per process, so it is a switch that forwards to
the running worker's provider.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from opentelemetry import trace
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import Event, ReadableSpan, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import Link, SpanContext, Status, StatusCode, TraceFlags

from streamflow.errors import TelemetryError

from ._otlp_json import JsonSpanProcessor
from ._spans import RecSpan
from ._tracing import Sampling, Tracing

log = logging.getLogger("streamflow.telemetry")


class _SwitchTracer(trace.Tracer):
    def __init__(self, switch: _SwitchProvider, name: str, version: str | None) -> None:
        self.switch, self.name, self.version = switch, name, version

    def _target(self) -> trace.Tracer:
        cur = self.switch.current
        return cur.get_tracer(self.name, self.version) if cur else trace.NoOpTracer()

    def start_span(self, *args: Any, **kwargs: Any) -> trace.Span:
        return self._target().start_span(*args, **kwargs)

    @contextmanager
    def start_as_current_span(  # type: ignore[override]  # same call, plain contextmanager
        self, *args: Any, **kwargs: Any
    ) -> Iterator[trace.Span]:
        with self._target().start_as_current_span(*args, **kwargs) as span:
            yield span


class _SwitchProvider(trace.TracerProvider):
    current: TracerProvider | None = None

    def get_tracer(self, instrumenting_module_name: str,
                   instrumenting_library_version: str | None = None,
                   schema_url: str | None = None,
                   attributes: Mapping[str, Any] | None = None) -> trace.Tracer:
        return _SwitchTracer(self, instrumenting_module_name, instrumenting_library_version)


_SWITCH = _SwitchProvider()


def readable(s: RecSpan, resource: Resource) -> ReadableSpan:
    """A StreamFlow span as an SDK span, for the SDK's exporters (console, protobuf, gRPC)."""
    flags = TraceFlags(TraceFlags.SAMPLED)
    ctx = SpanContext(s.trace_id, s.span_id, is_remote=False, trace_flags=flags)
    parent = (SpanContext(s.trace_id, s.parent_id, is_remote=True, trace_flags=flags)
              if s.parent_id is not None else None)
    return ReadableSpan(
        name=s.name, context=ctx, parent=parent, resource=resource, attributes=s.attributes,
        events=[Event(n, a, t) for n, t, a in s.events],
        links=[Link(SpanContext(t, i, is_remote=True, trace_flags=flags)) for t, i in s.links],
        kind=s.kind, start_time=s.start_ns, end_time=s.end_ns,
        status=Status(StatusCode.ERROR, s.status_message) if s.status_code else Status(),
        instrumentation_scope=InstrumentationScope("streamflow"))


class TracingSetup:
    def __init__(self, resource: Resource, sampling: Sampling, processor: SpanProcessor) -> None:
        self.sampling, self.processor, self.resource = sampling, processor, resource
        root = TraceIdRatioBased(sampling.ratio)
        self.user_provider = TracerProvider(
            resource=resource, sampler=ParentBased(root) if sampling.parent_based else root)
        self.user_provider.add_span_processor(processor)
        if not isinstance(trace.get_tracer_provider(), _SwitchProvider):
            trace.set_tracer_provider(_SWITCH)
        if isinstance(trace.get_tracer_provider(), _SwitchProvider):
            _SWITCH.current = self.user_provider
        else:
            log.info("a global TracerProvider is already set; spans opened in stages use it")

    def tracing(self, messaging_system: str) -> Tracing:
        proc = self.processor
        if isinstance(proc, JsonSpanProcessor):
            return Tracing(proc.on_end, messaging_system, self.sampling)
        resource = self.resource

        def sdk_sink(s: RecSpan) -> None:
            proc.on_end(readable(s, resource))

        return Tracing(sdk_sink, messaging_system, self.sampling)

    @property
    def dropped(self) -> int:
        """Spans the exporter could not deliver (only known for the JSON exporter)."""
        return int(getattr(self.processor, "dropped", 0))

    def shutdown(self) -> None:
        if _SWITCH.current is self.user_provider:
            _SWITCH.current = None
        self.processor.force_flush()
        self.processor.shutdown()


def configure_tracing(default_service: str = "streamflow") -> TracingSetup | None:
    """Tracing as the ``OTEL_*`` variables ask, or None when it stays off (no exporter or
    endpoint configured, ``OTEL_SDK_DISABLED=true`` or the ``always_off`` sampler)."""
    if os.environ.get("OTEL_SDK_DISABLED", "").lower() == "true":
        return None
    exporter_name = os.environ.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    endpoint = os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or os.environ.get(
        "OTEL_EXPORTER_OTLP_ENDPOINT")
    if exporter_name == "none" or (not exporter_name and not endpoint):
        return None
    sampling = Sampling.from_env()
    if sampling.ratio == 0.0 and not sampling.parent_based:
        return None
    resource = Resource.create(
        {} if os.environ.get("OTEL_SERVICE_NAME") else {SERVICE_NAME: default_service})
    return TracingSetup(resource, sampling, _processor(exporter_name, resource))


def _processor(exporter_name: str, resource: Resource) -> SpanProcessor:
    # Deferred: exporters load only for the one chosen; the grpc one is an optional extra.
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter

    if exporter_name == "console":
        return BatchSpanProcessor(ConsoleSpanExporter())
    if exporter_name not in ("", "otlp"):
        raise TelemetryError(f"OTEL_TRACES_EXPORTER={exporter_name!r} is not supported; use "
                             "otlp (default), console or none")
    protocol = (os.environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
                or os.environ.get("OTEL_EXPORTER_OTLP_PROTOCOL") or "http/json").strip()
    if protocol == "http/json":
        return JsonSpanProcessor(resource=resource)
    if protocol == "http/protobuf":
        # Deferred: the protobuf exporter loads only when chosen (JSON is the default).
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        return BatchSpanProcessor(OTLPSpanExporter())
    if protocol == "grpc":
        try:  # Deferred: the grpc exporter is the optional `grpc` extra.
            from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (
                OTLPSpanExporter as GrpcExporter,
            )
        except ImportError as e:
            raise TelemetryError(
                "OTEL_EXPORTER_OTLP_PROTOCOL=grpc needs the gRPC exporter: "
                "pip install 'streamflow[grpc]' (or use http/json on port 4318)") from e
        return BatchSpanProcessor(GrpcExporter())
    raise TelemetryError(
        f"OTEL_EXPORTER_OTLP_PROTOCOL={protocol!r} is not supported; use 'http/json' "
        "(default, port 4318), 'http/protobuf' or 'grpc' (port 4317)")
