"""Reading traces back from the real Jaeger query API, polling while ingestion catches up."""

from __future__ import annotations

import time

from streamflow.observability import JSpan, get_trace, search_service

__all__ = ["JSpan", "chain", "fetch_trace", "search_service"]


def fetch_trace(query_url: str, trace_id: str, min_spans: int, timeout: float = 30) -> list[JSpan]:
    """Poll until the trace has at least ``min_spans`` spans: ingestion is asynchronous."""
    deadline = time.time() + timeout
    spans: list[JSpan] = []
    while time.time() < deadline:
        spans = get_trace(query_url, trace_id)
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
