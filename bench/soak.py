"""Soak: does a long run stay flat? Issue 17's 2,000,000 records on Kafka, per guarantee.

One worker process (``python -m streamflow worker``, ``bench/_soak_pipeline.py``) runs a map
over 1,000,000 records, a three-input barrier fed 3 x 200,000 over 200,000 keys (each once)
and a one-second event-time window fed 400,000 ticks (about 8,000 windows close), all mixed
through the run. Every bounded structure is set small enough to be full by the 25% mark
(``settings`` in the result says what was used): the dedupe window (``dedupe_window_s``,
``dedupe_max_runs``), the barrier's ``retention_s`` (event time), the window's
``max_records``, and ``ledger_retention_s`` when this StreamFlow has it.

First a calibration: the same pipeline in a namespace of its own, fed as fast as it takes
for ``--calibrate-s`` seconds; its committed records per second are the rate the run must
keep to 80% of. Then the run, fed ahead of the worker's committed offsets. At 25% and at 100%:
RSS; CPU per record (user+system of the worker) over the preceding 5% of the records; live
state bytes (the latest non-tombstone value per key of the state changelogs and the run
ledger; the worker exposes no in-memory state size, so none is added); then SIGTERM, and the
time until the restarted worker's /readyz answers 200; ledger entries read at that start
(the ``streamflow_ledger_entries_loaded`` gauge when the worker has it, else the entries
counted in the ledger topic just before the restart). Afterwards every output is read back
(read_committed): each map and barrier output and each closed window exactly once, windows
with every tick. ``bench/_soak_met.py`` says when it is met.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
import uuid
from pathlib import Path
from typing import Any

from streamflow import Settings
from streamflow import devservices as services
from streamflow.devservices import delete_topics

from . import _soak_pipeline as sp
from ._kafka import untraced_kafka
from ._soak_check import check_outputs
from ._soak_io import Feed, Progress, read_changelogs
from ._soak_met import combine, reasons, windows_required
from ._soak_worker import LEDGER_GAUGE, WorkerProc, broker_pid

LOGS = Path("/tmp/streamflow-bench-soak")
STALL_S = 120.0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--records", type=int, default=2_000_000,
                        help="input records (rounded down to a multiple of 10)")
    parser.add_argument("--quick", action="store_true",
                        help="100,000 records, a 15 s calibration, 1 s wall-clock windows")
    parser.add_argument("--mode", choices=("alo", "eos", "both"), default="both",
                        help="at-least-once, exactly-once or both, one after the other")
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--calibrate-s", type=float, default=None, help="default 60 (15 quick)")
    parser.add_argument("--window-s", type=float, default=None,
                        help="dedupe_window_s and ledger_retention_s (default 10, quick 1)")
    parser.add_argument("--dedupe-max-runs", type=int, default=None,
                        help="default 5000 (1000 quick, the least allowed)")
    parser.add_argument("--barrier-retention-s", type=float, default=5.0,
                        help="the barrier's retention, in event time (keys are 10 ms apart)")


def _say(msg: str) -> None:
    print(f"soak: {msg}", file=sys.stderr, flush=True)


def plan(args: argparse.Namespace) -> dict[str, Any]:
    """The records and the settings of the run (what ``settings`` reports)."""
    quick = bool(args.quick)
    records = 100_000 if quick and args.records == 2_000_000 else args.records
    window_s = args.window_s if args.window_s is not None else (1.0 if quick else 10.0)
    max_runs = args.dedupe_max_runs or (1000 if quick else 5000)
    ledger_known = "ledger_retention_s" in Settings.model_fields
    env = {"STREAMFLOW_DEDUPE_WINDOW_S": str(window_s),
           "STREAMFLOW_DEDUPE_MAX_RUNS": str(max_runs),
           "STREAMFLOW_LEDGER_RETENTION_S": str(window_s),
           "BENCH_SOAK_BARRIER_RETENTION_S": str(args.barrier_retention_s),
           "BENCH_SOAK_WINDOW_MAX_RECORDS": "1000"}
    settings = {"dedupe_window_s": window_s, "dedupe_max_runs": max_runs,
                "ledger_retention_s": window_s if ledger_known else None,
                "ledger_retention_known": ledger_known,
                "barrier_retention_s": args.barrier_retention_s, "window_size_s": sp.WINDOW_S,
                "window_max_records": 1000, "window_keys": sp.WINDOW_KEYS,
                "partitions": args.partitions, "other": "shipped defaults, tracing off"}
    return {"records": records - records % (sp.BLOCK * 20), "env": env, "settings": settings,
            "calibrate_s": args.calibrate_s or (15.0 if quick else 60.0)}


async def _start(p: dict[str, Any], ns: str, eos: bool, tag: str) -> WorkerProc:
    w = WorkerProc(services.KAFKA_BOOTSTRAP, ns, p["partitions"], eos, p["env"],
                   LOGS / f"{ns}-{tag}.log")
    w.spawn()
    if await w.ready() is None:
        raise RuntimeError(f"the worker did not get ready; log: {w.log}")
    return w


async def calibrate(p: dict[str, Any], eos: bool) -> tuple[float, list[str]]:
    """Committed records per second of the same pipeline, fed as fast as it takes (and what
    disturbed it)."""
    ns, broker = "soakcal" + uuid.uuid4().hex[:8], broker_pid()
    w = await _start(p, ns, eos, "calibration")
    prog, feed = Progress(services.KAFKA_BOOTSTRAP, ns), Feed(services.KAFKA_BOOTSTRAP, ns,
                                                              p["partitions"])
    await prog.start()
    await feed.start()
    stop = asyncio.Event()
    task = asyncio.create_task(feed.to(p["records"], prog, stop))
    try:
        await prog.reach(1, 60)
        n0, t0 = prog.processed, time.perf_counter()
        await asyncio.sleep(2.0)  # past the first batches, unless the records ran out first
        if prog.processed < p["records"]:
            n0, t0 = prog.processed, time.perf_counter()
        await prog.reach(p["records"], p["calibrate_s"])
        n1, t1 = prog.processed, time.perf_counter()
    finally:
        stop.set()
        await asyncio.gather(task, return_exceptions=True)
        await feed.stop()
        await prog.stop()
        await w.stop()
        await delete_topics(services.KAFKA_BOOTSTRAP, lambda t: t.startswith(ns + "."))
    problems = [f"calibration worker log ERROR: {e[:200]}" for e in w.errors()[:3]]
    if broker_pid() != broker:
        problems.append("the Kafka broker was restarted during the calibration (not by this "
                        "benchmark)")
    return (n1 - n0) / max(1e-9, t1 - t0), problems


async def segment(w: WorkerProc, prog: Progress, feed: Feed, pct: float,
                  total: int) -> dict[str, Any]:
    """Feed up to ``pct`` of the records; CPU per record over the last 5% of them (counted as
    committed), RSS, and the seconds it took (busy time: the worker was fed throughout)."""
    lo = int(total * (pct - 0.05)) // sp.BLOCK * sp.BLOCK
    hi = int(total * pct) // sp.BLOCK * sp.BLOCK
    t0 = time.perf_counter()
    task = asyncio.create_task(feed.to(hi, prog))
    try:
        n0, c0 = await _sample(w, prog, lo)
        n1, c1 = await _sample(w, prog, hi)
        t1 = time.perf_counter()
    finally:
        await task
    cpu = None if c0 is None or c1 is None or n1 <= n0 else (c1 - c0) / (n1 - n0) * 1e6
    return {"busy_s": t1 - t0, "rss_mb": w.rss_mb(), "cpu_us": cpu}


async def _sample(w: WorkerProc, prog: Progress, n: int) -> tuple[int, float | None]:
    """Once ``n`` records are committed: the count committed then and the worker's CPU
    seconds with it (the two taken together, so a late poll shifts both ends alike)."""
    if not await prog.reach(n, STALL_S + n / 1000):
        raise RuntimeError(f"stalled at {prog.processed:,} records (log: {w.log})")
    return prog.processed, w.cpu_s()


async def checkpoint(w: WorkerProc, p: dict[str, Any], ns: str, tag: str) -> dict[str, Any]:
    """State bytes and ledger entries now, then the restart."""
    log = await read_changelogs(services.KAFKA_BOOTSTRAP, ns, p["partitions"])
    before = await w.metrics()
    _say(f"{tag}: state {log.total_mb:.1f} MB {log.live_bytes}, ledger "
         f"{log.ledger_messages:,} messages, {log.ledger_entries:,} entries; restarting")
    restart = await w.restart()
    gauge = await w.ledger_gauge()
    restart["rss_mb_after_start"] = w.rss_mb()  # what the new process holds once it is ready
    _say(f"{tag}: restart {restart}, ledger gauge {gauge}")
    return {"state_mb": log.total_mb, "state_bytes": log.live_bytes, **restart,
            "ledger_gauge": gauge, "ledger_gauge_before": before.get(LEDGER_GAUGE),
            "ledger_entries": gauge if gauge is not None else log.ledger_entries,
            "ledger_entries_source": "gauge" if gauge is not None else "counted",
            "ledger_messages": log.ledger_messages, "ledger_entries_counted":
                log.ledger_entries, "open_barriers": before.get("streamflow_open_barriers")}


async def main_run(p: dict[str, Any], eos: bool) -> dict[str, Any]:
    ns = "soak" + uuid.uuid4().hex[:8]
    total, broker = p["records"], broker_pid()
    w = await _start(p, ns, eos, "run")
    prog, feed = Progress(services.KAFKA_BOOTSTRAP, ns), Feed(services.KAFKA_BOOTSTRAP, ns,
                                                              p["partitions"])
    await prog.start()
    await feed.start()
    marks: dict[str, dict[str, Any]] = {}
    try:
        for pct, tag in ((0.25, "25pct"), (1.0, "100pct")):
            seg = await segment(w, prog, feed, pct, total)
            _say(f"{tag}: {prog.processed:,} records, RSS {seg['rss_mb']} MB, "
                 f"CPU {seg['cpu_us']} us/record")
            marks[tag] = {**seg, **await checkpoint(w, p, ns, tag)}
    finally:
        await feed.stop()
        await prog.stop()
        await w.stop()
    try:
        problems, closed = await check_outputs(services.KAFKA_BOOTSTRAP, ns, p["partitions"],
                                               total)
    finally:
        await delete_topics(services.KAFKA_BOOTSTRAP, lambda t: t.startswith(ns + "."))
    problems += [f"worker log ERROR: {e[:200]}" for e in w.errors()[:3]]
    if broker_pid() != broker:
        problems.append("the Kafka broker was restarted during the run (not by this benchmark)")
    busy = marks["25pct"]["busy_s"] + marks["100pct"]["busy_s"]
    return {"ns": ns, "log": str(w.log), "marks": marks, "windows_closed": closed,
            "rate_rps": total / busy, "problems": problems}


def figures(p: dict[str, Any], cal: float, run: dict[str, Any]) -> dict[str, Any]:
    """One mode's result: the issue's figures, what else was measured, and why not met."""
    m = run["marks"]
    fig: dict[str, Any] = {"records": p["records"], "rate_rps": round(run["rate_rps"], 1),
                           "calibration_rps": round(cal, 1)}
    for tag in ("25pct", "100pct"):
        for name, nd in (("rss_mb", 1), ("cpu_us", 2), ("state_mb", 2), ("restart_s", 2)):
            v = m[tag][name]
            fig[f"{name}_{tag}"] = None if v is None else round(v, nd)
        fig[f"ledger_entries_{tag}"] = m[tag]["ledger_entries"]
        fig[f"detail_{tag}"] = {k: m[tag][k] for k in (
            "stop_s", "start_s", "rss_mb_after_start", "state_bytes", "ledger_entries_source",
            "ledger_messages", "ledger_entries_counted", "ledger_gauge", "ledger_gauge_before",
            "open_barriers", "busy_s")}
    first = m["25pct"]
    s = p["settings"]
    map_runs_25 = p["records"] // 4 // 2
    fig["full_by_25pct"] = {
        "dedupe window": (map_runs_25 >= 2 * s["dedupe_max_runs"]
                          or first["busy_s"] >= 2 * s["dedupe_window_s"]),
        "barrier retention": (p["records"] // 4 // sp.BLOCK * sp.KEY_STEP_MS / 1000
                              >= 2 * s["barrier_retention_s"]),
        "ledger retention": (first["busy_s"] >= s["dedupe_window_s"]
                             if s["ledger_retention_known"] else None),
    }
    fig.update(windows_closed=run["windows_closed"],
               windows_required=windows_required(p["records"]), problems=run["problems"],
               log=run["log"])
    fig["why_not"] = reasons(fig)
    return fig


async def run(args: argparse.Namespace) -> dict[str, Any]:
    untraced_kafka()
    p = plan(args)
    p["partitions"] = args.partitions
    modes = ["alo", "eos"] if args.mode == "both" else [args.mode]
    runs: dict[str, dict[str, Any]] = {}
    for mode in modes:
        eos = mode == "eos"
        _say(f"{mode}: calibrating for {p['calibrate_s']:.0f} s")
        cal, disturbed = await calibrate(p, eos)
        _say(f"{mode}: calibration {cal:,.0f} records/s; the run: {p['records']:,} records")
        result = await main_run(p, eos)
        result["problems"] = disturbed + result["problems"]
        runs[mode] = figures(p, cal, result)
        _say(f"{mode}: {'met' if not runs[mode]['why_not'] else runs[mode]['why_not']}")
    top = combine(runs)
    return {"records": p["records"], "modes": list(runs), **{k: v for k, v in top.items()
                                                             if k != "met"},
            "rate_rps": min(r["rate_rps"] for r in runs.values()),
            "calibration_rps": {m: r["calibration_rps"] for m, r in runs.items()},
            "settings": p["settings"], "runs": runs,
            "target": "per mode: every 100% figure (RSS, CPU us/record, live state MB, ledger "
                      "entries read at start) within 1.1x of its 25% figure; restart at 100% "
                      "<= restart at 25% + 1 s and <= 5 s; rate >= 80% of the calibration's; "
                      ">= 5,000 windows closed (at 2M records); bounded structures full by "
                      "25%; no output missing or duplicated, no dead letter, no ERROR logged. "
                      "Top-level figures are the worse of the modes.",
            "met": top["met"]}
