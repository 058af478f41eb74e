"""Reading traces back from the real Jaeger query API (OTLP JSON from /api/v3)."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import httpx

KINDS = {1: "INTERNAL", 2: "SERVER", 3: "CLIENT", 4: "PRODUCER", 5: "CONSUMER"}


@dataclass
class JSpan:
    span_id: str
    parent_id: str | None
    name: str
    kind: str
    attributes: dict[str, Any]
    status_code: int
    links: list[str]


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


def fetch_trace(query_url: str, trace_id: str, min_spans: int, timeout: float = 30) -> list[JSpan]:
    """Poll until the trace has at least ``min_spans`` spans: ingestion is asynchronous."""
    deadline = time.time() + timeout
    spans: list[JSpan] = []
    while time.time() < deadline:
        r = httpx.get(f"{query_url}/api/v3/traces/{trace_id}", timeout=10)
        if r.status_code == 200:
            spans = []
            for rs in r.json()["result"]["resourceSpans"]:
                for ss in rs["scopeSpans"]:
                    for s in ss["spans"]:
                        assert s["traceId"] == trace_id
                        spans.append(JSpan(
                            s["spanId"], s.get("parentSpanId") or None, s["name"], _kind(s["kind"]),
                            {a["key"]: _value(a["value"]) for a in s.get("attributes", [])},
                            int(s.get("status", {}).get("code", 0)),
                            [lk["spanId"] for lk in s.get("links", [])],
                        ))
            if len(spans) >= min_spans:
                return spans
        time.sleep(0.3)
    raise AssertionError(f"trace {trace_id} has {len(spans)} spans in Jaeger, wanted {min_spans}")


def chain(spans: list[JSpan], leaf: JSpan) -> list[JSpan]:
    """The path from the root down to ``leaf``, following parent ids."""
    by_id = {s.span_id: s for s in spans}
    path = [leaf]
    while path[-1].parent_id is not None:
        path.append(by_id[path[-1].parent_id])
    return list(reversed(path))
