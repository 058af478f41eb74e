"""Reading traces back from Jaeger's query API (``/api/v3``, OTLP JSON), for ``trace``."""

from __future__ import annotations

import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from typing import Any

import orjson

KINDS = {1: "INTERNAL", 2: "SERVER", 3: "CLIENT", 4: "PRODUCER", 5: "CONSUMER"}


@dataclass
class JSpan:
    trace_id: str
    span_id: str
    parent_id: str | None
    name: str
    kind: str
    attributes: dict[str, Any]
    status_code: int
    links: list[tuple[str, str]]
    """(trace id, span id) of each linked span."""
    start_ns: int = 0
    end_ns: int = 0
    service: str = ""
    events: list[str] = field(default_factory=list)


def _value(v: dict[str, Any]) -> Any:
    for k in ("stringValue", "boolValue", "doubleValue"):
        if k in v:
            return v[k]
    if "intValue" in v:
        return int(v["intValue"])
    return v


def _kind(k: Any) -> str:
    if isinstance(k, int):
        return KINDS.get(k, str(k))
    return str(k).removeprefix("SPAN_KIND_")


def parse_spans(body: dict[str, Any]) -> list[JSpan]:
    spans: list[JSpan] = []
    for rs in body.get("result", {}).get("resourceSpans", []):
        service = next((_value(a["value"]) for a in rs.get("resource", {}).get("attributes", [])
                        if a["key"] == "service.name"), "")
        for ss in rs.get("scopeSpans", []):
            for s in ss.get("spans", []):
                spans.append(JSpan(
                    s["traceId"], s["spanId"], s.get("parentSpanId") or None, s["name"],
                    _kind(s["kind"]),
                    {a["key"]: _value(a["value"]) for a in s.get("attributes", [])},
                    int(s.get("status", {}).get("code", 0)),
                    [(lk.get("traceId", ""), lk["spanId"]) for lk in s.get("links", [])],
                    int(s.get("startTimeUnixNano", 0)), int(s.get("endTimeUnixNano", 0)),
                    str(service), [e.get("name", "") for e in s.get("events", [])],
                ))
    return spans


def get_trace(query_url: str, trace_id: str) -> list[JSpan]:
    """The trace's spans, or [] when Jaeger has none (unsampled, or not ingested yet)."""
    url = f"{query_url.rstrip('/')}/api/v3/traces/{trace_id}"
    try:
        with urllib.request.urlopen(url, timeout=10) as resp:
            return parse_spans(orjson.loads(resp.read()))
    except urllib.error.HTTPError as e:
        if e.code == 404:
            return []
        raise


def search_service(query_url: str, service: str, lookback_s: float = 3600,
                   limit: int = 1000) -> dict[str, list[JSpan]]:
    """Recent traces of ``service`` by trace id (spans of other services in them included)."""
    now = time.time()
    params = urllib.parse.urlencode({
        "query.service_name": service,
        "query.start_time_min": _rfc3339(now - lookback_s),
        "query.start_time_max": _rfc3339(now + 60),
        "query.num_traces": limit,
    })
    url = f"{query_url.rstrip('/')}/api/v3/traces?{params}"
    try:
        with urllib.request.urlopen(url, timeout=30) as resp:
            body = orjson.loads(resp.read())
    except urllib.error.HTTPError as e:
        if e.code == 404:
            return {}
        raise
    out: dict[str, list[JSpan]] = {}
    for rs in body.get("result", {}).get("resourceSpans", []):
        for sp in parse_spans({"result": {"resourceSpans": [rs]}}):
            out.setdefault(sp.trace_id, []).append(sp)
    return out


def _rfc3339(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))


def tree_lines(spans: list[JSpan]) -> list[str]:
    """The spans as an indented tree (children by start time), links shown under their span."""
    ids = {s.span_id for s in spans}
    children: dict[str | None, list[JSpan]] = {}
    for s in spans:
        parent = s.parent_id if s.parent_id in ids else None
        children.setdefault(parent, []).append(s)
    lines: list[str] = []

    def walk(parent: str | None, depth: int) -> None:
        for s in sorted(children.get(parent, []), key=lambda x: x.start_ns):
            ms = (s.end_ns - s.start_ns) / 1e6
            flag = "  ERROR" if s.status_code == 2 else ""
            orphan = "  (parent not sampled)" if parent is None and s.parent_id else ""
            lines.append(f"{'  ' * depth}{s.name} [{s.kind.lower()}] {ms:.2f} ms{flag}{orphan}")
            for tid, sid in s.links:
                lines.append(f"{'  ' * depth}  ↳ link to span {sid} of trace {tid}")
            walk(s.span_id, depth + 1)

    walk(None, 0)
    return lines
