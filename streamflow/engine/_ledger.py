"""What a worker's start reads of the run ledger: its open runs, the dedupe window of its
settled ones, and (for quality gates) enough passing runs for row-count history. Start-up time
so follows the open runs and the window, not the ledger's history.

It also tidies what earlier runs left on the compacted topic: batches an older version wrote
there, once past retention, and open records of runs that settled meanwhile (a crash between
an attempt's record and the commit, a run re-run after the dedupe window).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Collection
from dataclasses import dataclass, field
from typing import Any

from streamflow.model import OutMessage, Settings, runs_topic
from streamflow.observability import Metrics
from streamflow.state import (
    HISTORY,
    SETTLED,
    done_of,
    fold_raw,
    fold_topic,
    merge,
    settled_message,
)
from streamflow.transports import Transport

log = logging.getLogger("streamflow.engine")


@dataclass
class Loaded:
    runs: dict[str, dict[str, Any]]
    """Every run read, as ``fold_raw`` gives it: open runs whole, settled ones brief."""
    open_at: dict[str, int] = field(default_factory=dict)
    """Open run ids: the partition of their record on the compacted topic."""


async def load_ledger(transport: Transport, settings: Settings, metrics: Metrics,
                      gated: Collection[str] = ()) -> Loaded:
    topic, now = runs_topic(settings.namespace), time.time()
    where: dict[str, int] = {}
    open_runs, stale = await fold_topic(
        transport, topic, stale_before=int((now - settings.ledger_retention_s) * 1000),
        where=where)
    done, span, read = await _settled(transport, done_of(topic), gated, now, settings,
                                      set(where))
    runs = merge(open_runs, done)
    leaked = [rid for rid in where if runs.get(rid, {}).get("status") in SETTLED]
    tidy: list[OutMessage] = stale + [settled_message(topic, r, where.pop(r)) for r in leaked]
    if tidy:
        await transport.publish(tidy)
        log.info("run ledger: %d old batches and %d settled runs' open records left the "
                 "compacted topic", len(stale), len(leaked))
    metrics.ledger_loaded.update({"open": len(open_runs), "done": read})
    log.info("run ledger: read %d open runs and %d settled runs of the last %gs at start "
             "(kept %d)", len(open_runs), read, span, len(done))
    return Loaded(runs, where)


async def _settled(transport: Transport, topic: str, gated: Collection[str], now: float,
                   s: Settings, keep: set[str]) -> tuple[dict[str, dict[str, Any]], float, int]:
    """The dedupe window of settled runs; further back (up to retention, four times the span
    a step) while a gated stage has fewer passing runs than its history holds. Each stage
    keeps its newest ``dedupe_max_runs`` (what its dedupe window can hold) as the fold goes,
    so a start's memory follows that bound, not the traffic of the window. Also returns
    how many settled runs were read."""
    span = s.dedupe_window_s
    while True:
        done: dict[str, dict[str, Any]] = {}
        limit, read = 2 * s.dedupe_max_runs, 0
        async for chunk in transport.scan_topic(topic, since_ms=int((now - span) * 1000)):
            before = len(done)
            fold_raw(chunk, done, brief=True)
            read += len(done) - before
            if len(done) > limit:
                limit = 2 * max(s.dedupe_max_runs, prune(done, s.dedupe_max_runs, keep))
        prune(done, s.dedupe_max_runs, keep)
        if span >= s.ledger_retention_s or all(
                _passing(done, g) >= HISTORY for g in gated):
            return done, span, read
        span = min(s.ledger_retention_s, span * 4)


def prune(runs: dict[str, dict[str, Any]], per_stage: int, keep: Collection[str]) -> int:
    """Keep each stage's newest ``per_stage`` runs (by end time) and those in ``keep``; the
    runs left."""
    by_stage: dict[str, list[tuple[int, str]]] = {}
    for rid, d in runs.items():
        by_stage.setdefault(d["stage"], []).append((int(d["ended_ms"]), rid))
    for rows in by_stage.values():
        if len(rows) > per_stage:
            rows.sort()
            for _, rid in rows[:-per_stage]:
                if rid not in keep:
                    del runs[rid]
    return len(runs)


def _passing(runs: dict[str, dict[str, Any]], stage: str) -> int:
    return sum(1 for d in runs.values() if d["stage"] == stage and d["status"] == "succeeded")
