"""Tracing, spans, OTLP/JSON export, metrics, logging, health, the worker's HTTP port,
OpenLineage events and the Jaeger query client.

May import ``streamflow.model`` only.
"""

from ._health import Probe
from ._http import HttpServer, describe_process, port_holder
from ._jaeger import JSpan, get_trace, search_service, tree_lines
from ._logging import JsonFormatter, TextFormatter, configure_logging
from ._metrics import Metrics
from ._otlp_json import encode
from ._run_events import RunEvents, run_events
from ._setup import configure_tracing
from ._spans import AttrValue, RecSpan, end_spans, fail_span
from ._tracing import (
    Sampling,
    Tracing,
    format_traceparent,
    is_sampled,
    parse_traceparent,
    trace_id_of,
    traceparent_of,
)

__all__ = [
    "AttrValue",
    "HttpServer",
    "JSpan",
    "JsonFormatter",
    "Metrics",
    "Probe",
    "RecSpan",
    "RunEvents",
    "Sampling",
    "TextFormatter",
    "Tracing",
    "configure_logging",
    "configure_tracing",
    "describe_process",
    "encode",
    "end_spans",
    "fail_span",
    "format_traceparent",
    "get_trace",
    "is_sampled",
    "parse_traceparent",
    "port_holder",
    "run_events",
    "search_service",
    "trace_id_of",
    "traceparent_of",
    "tree_lines",
]
