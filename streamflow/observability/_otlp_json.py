"""OTLP/HTTP with JSON bodies: a span processor that never blocks the event loop and counts
what it could not deliver.

The SDK's protobuf encoder costs 15 to 35 µs per span in the exporter thread, which holds the GIL
the whole time; building plain dicts and encoding them with orjson costs a few. The SDK's batch
processor also drops spans silently when its queue fills; this one keeps a large queue, exports
whenever a batch is ready, and counts ``dropped`` so a benchmark can prove it lost nothing.
"""

from __future__ import annotations

import collections
import http.client
import logging
import os
import threading
import time
import urllib.parse
from collections.abc import Sequence
from typing import Any

import orjson
from opentelemetry.context import Context
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, Span, SpanProcessor

from streamflow.connectors import redact

from ._spans import RecSpan, otlp_attributes, rec_span_json

log = logging.getLogger("streamflow.telemetry")

DEFAULT_ENDPOINT = "http://127.0.0.1:4318/v1/traces"


def traces_endpoint() -> str:
    """Where spans go, from the standard OTEL_EXPORTER_OTLP_(TRACES_)ENDPOINT variables."""
    full = os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
    if full:
        return full
    base = os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")
    return base.rstrip("/") + "/v1/traces" if base else DEFAULT_ENDPOINT


def _headers_from_env() -> dict[str, str]:
    raw = os.environ.get("OTEL_EXPORTER_OTLP_TRACES_HEADERS") or os.environ.get(
        "OTEL_EXPORTER_OTLP_HEADERS", "")
    out: dict[str, str] = {}
    for part in raw.split(","):
        k, sep, v = part.partition("=")
        if sep:
            out[urllib.parse.unquote(k.strip())] = urllib.parse.unquote(v.strip())
    return out


def encode_span(s: ReadableSpan) -> dict[str, Any]:
    """An SDK span (one that user code opened) in OTLP/JSON."""
    ctx = s.context
    assert ctx is not None
    out: dict[str, Any] = {
        "traceId": f"{ctx.trace_id:032x}", "spanId": f"{ctx.span_id:016x}", "name": s.name,
        "kind": s.kind.value + 1,  # the API counts from INTERNAL=0, OTLP from UNSPECIFIED=0
        "startTimeUnixNano": str(s.start_time or 0), "endTimeUnixNano": str(s.end_time or 0),
        "attributes": otlp_attributes(s.attributes),
    }
    if s.parent is not None:
        out["parentSpanId"] = f"{s.parent.span_id:016x}"
    if s.events:
        out["events"] = [{"name": e.name, "timeUnixNano": str(e.timestamp),
                          "attributes": otlp_attributes(e.attributes)} for e in s.events]
    if s.links:
        out["links"] = [{"traceId": f"{lk.context.trace_id:032x}",
                         "spanId": f"{lk.context.span_id:016x}",
                         "attributes": otlp_attributes(lk.attributes)} for lk in s.links]
    code = s.status.status_code.value
    if code:
        out["status"] = {"code": code, "message": s.status.description or ""}
    return out


def encode(spans: Sequence[ReadableSpan | RecSpan], resource: Resource | None = None) -> bytes:
    """An ExportTraceServiceRequest in OTLP/JSON: spans grouped by resource and scope.

    StreamFlow's own spans (``RecSpan``) belong to ``resource`` and the ``streamflow`` scope.
    """
    groups: dict[int, tuple[Resource, dict[tuple[str, str], list[bytes]]]] = {}
    own = resource or Resource.get_empty()
    for s in spans:
        if isinstance(s, RecSpan):
            groups.setdefault(id(own), (own, {}))[1].setdefault(
                ("streamflow", ""), []).append(rec_span_json(s))
            continue
        res = groups.setdefault(id(s.resource), (s.resource, {}))
        scope = s.instrumentation_scope
        key = (scope.name, scope.version or "") if scope is not None else ("", "")
        res[1].setdefault(key, []).append(orjson.dumps(encode_span(s)))
    resource_spans = []
    for owner, scopes in groups.values():
        scope_spans = b",".join([
            b'{"scope":%b,"spans":[%b]}' % (orjson.dumps({"name": n, "version": v}),
                                            b",".join(encoded))
            for (n, v), encoded in scopes.items()])
        resource_spans.append(b'{"resource":{"attributes":%b},"scopeSpans":[%b]}' % (
            orjson.dumps(otlp_attributes(owner.attributes)), scope_spans))
    return b'{"resourceSpans":[%b]}' % b",".join(resource_spans)


class JsonSpanProcessor(SpanProcessor):
    """Queues ended spans and posts them as OTLP/JSON from one background thread."""

    def __init__(self, endpoint: str | None = None, resource: Resource | None = None,
                 max_queue: int = 500_000, batch: int = 2_000, interval_s: float = 0.5,
                 timeout_s: float = 10.0) -> None:
        self.resource = resource
        self.url = urllib.parse.urlsplit(endpoint or traces_endpoint())
        if self.url.scheme not in ("http", "https"):
            raise ValueError(f"OTLP endpoint {endpoint!r} is not an http(s) URL")
        self.headers = {"Content-Type": "application/json", **_headers_from_env()}
        self.max_queue, self.batch = max_queue, batch
        self.interval_s, self.timeout_s = interval_s, timeout_s
        self.queue: collections.deque[ReadableSpan | RecSpan] = collections.deque()
        self.dropped = 0
        self.exported = 0
        self._conn: http.client.HTTPConnection | None = None
        self._export_lock = threading.Lock()
        self._wake = threading.Event()
        self._stopping = False
        self._thread = threading.Thread(target=self._loop, name="streamflow-otlp-json",
                                        daemon=True)
        self._thread.start()

    def on_start(self, span: Span, parent_context: Context | None = None) -> None:
        return None

    def on_end(self, span: ReadableSpan | RecSpan) -> None:
        q = self.queue
        if len(q) >= self.max_queue:
            self.dropped += 1
            return
        q.append(span)
        if len(q) >= self.batch:
            self._wake.set()

    def _loop(self) -> None:
        while not self._stopping:
            self._wake.wait(self.interval_s)
            self._wake.clear()
            self._drain()

    def _drain(self) -> None:
        with self._export_lock:
            q = self.queue
            while q:
                n = min(len(q), self.batch)
                self._post([q.popleft() for _ in range(n)])

    def _post(self, spans: list[ReadableSpan | RecSpan]) -> None:
        body = encode(spans, self.resource)
        for attempt in range(3):
            try:
                conn = self._connection()
                conn.request("POST", self.url.path or "/v1/traces", body, self.headers)
                resp = conn.getresponse()
                resp.read()
                if resp.status < 300:
                    self.exported += len(spans)
                    return
                if resp.status < 500 and resp.status != 429:
                    log.warning("OTLP endpoint refused %d spans: HTTP %d", len(spans),
                                resp.status)
                    break
            except (OSError, http.client.HTTPException) as e:
                log.debug("OTLP export attempt %d failed: %s", attempt + 1, e)
                self._reset()
            time.sleep(0.2 * (attempt + 1))
        self.dropped += len(spans)
        log.warning("could not export %d spans to %s", len(spans), redact(self.url.geturl()))

    def _connection(self) -> http.client.HTTPConnection:
        if self._conn is None:
            cls = (http.client.HTTPSConnection if self.url.scheme == "https"
                   else http.client.HTTPConnection)
            self._conn = cls(self.url.hostname or "127.0.0.1", self.url.port,
                             timeout=self.timeout_s)
        return self._conn

    def _reset(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        self._drain()
        return not self.queue

    def shutdown(self) -> None:
        self._stopping = True
        self._wake.set()
        self._thread.join(timeout=self.timeout_s)
        self._drain()
        self._reset()
