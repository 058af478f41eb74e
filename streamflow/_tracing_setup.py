"""Installing tracing for a worker from the standard ``OTEL_*`` variables.

Two providers share one span processor. StreamFlow's own spans come from an always-on provider
because the sampling decision is taken earlier, from the record's traceparent (``Tracing``).
Spans that user code opens through the global OpenTelemetry API go to a parent-based provider,
so they follow the record they were opened for. The global provider can be set only once per
process, so it is a switch that forwards to the running worker's provider.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

from opentelemetry import trace
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.sampling import ALWAYS_ON, ParentBased, TraceIdRatioBased

from ._otlp_json import JsonSpanProcessor
from ._telemetry import PrimedIds, Sampling, TelemetryError, Tracing

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


class TracingSetup:
    def __init__(self, resource: Resource, sampling: Sampling, processor: SpanProcessor) -> None:
        self.sampling, self.processor = sampling, processor
        self.ids = PrimedIds()
        self.provider = TracerProvider(resource=resource, sampler=ALWAYS_ON, id_generator=self.ids)
        self.provider.add_span_processor(processor)
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
        return Tracing(self.provider.get_tracer("streamflow"), messaging_system, self.sampling,
                       self.ids)

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
    return TracingSetup(resource, sampling, _processor(exporter_name))


def _processor(exporter_name: str) -> SpanProcessor:
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter

    if exporter_name == "console":
        return BatchSpanProcessor(ConsoleSpanExporter())
    if exporter_name not in ("", "otlp"):
        raise TelemetryError(f"OTEL_TRACES_EXPORTER={exporter_name!r} is not supported; use "
                             "otlp (default), console or none")
    protocol = (os.environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
                or os.environ.get("OTEL_EXPORTER_OTLP_PROTOCOL") or "http/json").strip()
    if protocol == "http/json":
        return JsonSpanProcessor()
    if protocol == "http/protobuf":
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        return BatchSpanProcessor(OTLPSpanExporter())
    if protocol == "grpc":
        try:
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


__all__: Sequence[str] = ("TracingSetup", "configure_tracing")
