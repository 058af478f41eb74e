"""StreamFlow side by side with raw aiokafka, faust-streaming and Quix Streams, on one broker.

Workloads: ``passthrough`` (consume and produce ~200-byte JSON records), ``map`` (decode,
validate with pydantic, transform, encode, produce), ``join`` (two co-partitioned input
topics, one output per key once both sides are in) and ``latency`` (the map work at fixed
open-loop rates, stamp before send to output readable under read_committed). Every system runs
alone in a child process on the same seeded input (4 partitions), and systems are interleaved
within each repeat, in rotating order; figures are medians over repeats. Throughput method:
bench/_peers_measure.py; latency method: bench/_peers_latency.py.

Writes DIR/results.json, DIR/results.md and DIR/chart.png (and the child logs under DIR/logs).
``--quick``: 200,000 records per throughput workload and 15 s per latency rate, over StreamFlow
at shipped defaults, raw aiokafka, Faust and Quix (at-least-once); one repeat unless
``--repeats`` says otherwise.

``met`` holds only if the run counts (``bench/_met.py``): no StreamFlow row lost or duplicated
an output, was capped, failed to sustain a latency rate or logged an ERROR, and no row a goal
compares with lost, duplicated or failed. Other rows' problems are listed, informational.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import shutil
import statistics
import sys
import time
import uuid
from pathlib import Path
from typing import Any

from streamflow import Settings
from streamflow import devservices as services
from streamflow.devservices import delete_topics

from ._met import describe, row_problems, run_problems
from ._peers_common import THROUGHPUT_WORKLOADS, Spec
from ._peers_latency import latency_run
from ._peers_measure import throughput_run
from ._peers_report import top_functions, versions, write_reports

# (system, settings): at-least-once unless named otherwise
QUICK = [("streamflow", "defaults"), ("aiokafka-raw", "at-least-once"),
         ("faust", "at-least-once"), ("quix", "at-least-once")]
FULL = [*QUICK, ("streamflow", "exactly-once"), ("streamflow", "tracing-1pct"),
        ("aiokafka-raw", "exactly-once"), ("quix", "exactly-once")]
RATES = (1000.0, 10000.0, 20000.0)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--quick", action="store_true",
                        help="200k records, 15 s per rate, at-least-once rows only, "
                             "1 repeat unless --repeats is given")
    parser.add_argument("--out", type=Path, default=Path("bench-peers"), help="output folder")
    parser.add_argument("--records", type=int, default=200_000,
                        help="input records per throughput run")
    parser.add_argument("--repeats", type=int, default=None,
                        help="interleaved repeats (default 3; 1 with --quick)")
    parser.add_argument("--seconds", type=float, default=None,
                        help="seconds per latency rate (default 30; 15 with --quick)")
    parser.add_argument("--workloads", default="passthrough,map,join,latency")
    parser.add_argument("--systems", default="",
                        help="comma-separated system[:settings] to keep (default: all)")
    parser.add_argument("--cap-seconds", type=float, default=None,
                        help="stop a throughput run this long after 2%% of its output "
                             "(default: none; 30 with --quick)")
    parser.add_argument("--profile", action="store_true",
                        help="py-spy the StreamFlow default rows (DIR/profiles/*.txt)")


def _configs(args: argparse.Namespace) -> list[tuple[str, str]]:
    configs = QUICK if args.quick else FULL
    if args.systems:
        keep = [s.strip() for s in args.systems.split(",") if s.strip()]
        configs = [c for c in configs if c[0] in keep or f"{c[0]}:{c[1]}" in keep]
    return configs


def _spec(system: str, settings: str, workload: str, n: int) -> Spec:
    ns = "bench" + uuid.uuid4().hex[:10]
    env: dict[str, str] = {}
    ratio = 0.0
    if settings == "tracing-1pct":
        env = {"OTEL_EXPORTER_OTLP_ENDPOINT": services.OTLP_HTTP_ENDPOINT,
               "OTEL_SERVICE_NAME": "bench-peers", "OTEL_TRACES_SAMPLER":
               "parentbased_traceidratio", "OTEL_TRACES_SAMPLER_ARG": "0.01"}
        ratio = 0.01
    inputs = ["sales", "payments"] if workload == "join" else ["in"]
    return Spec(system, settings, workload, ns, services.KAFKA_BOOTSTRAP, inputs, "out",
                n // 2 if workload == "join" else n, env=env, trace_ratio=ratio)


def _rotate(configs: list[tuple[str, str]], k: int) -> list[tuple[str, str]]:
    k %= len(configs)
    return configs[k:] + configs[:k]


async def _one(args: argparse.Namespace, system: str, settings: str, workload: str,
               rate: float | None, seconds: float) -> dict[str, Any]:
    if settings == "exactly-once" and system == "streamflow" \
            and "exactly_once" not in Settings.model_fields:
        return {"note": "this StreamFlow has no exactly_once setting yet", "skipped": True}
    spec = _spec(system, settings, "map" if rate else workload, args.records)
    logdir = args.out / "logs"
    try:
        if rate:
            return await latency_run(spec, rate, seconds, logdir)
        profile = (args.out / "profiles" / f"{workload}-{spec.ns}.txt"
                   if args.profile and (system, settings) == ("streamflow", "defaults")
                   else None)
        return await throughput_run(spec, args.records, logdir, profile, args.cap_seconds)
    except Exception as e:  # a broker restarted under us, say: report the run, go on
        return {"note": f"run failed: {type(e).__name__}: {e}"}
    finally:
        await _cleanup(spec)


async def _cleanup(spec: Spec) -> None:
    shutil.rmtree(f"/tmp/{spec.ns}", ignore_errors=True)
    for attempt in range(3):
        try:
            await delete_topics(spec.bootstrap, lambda t: spec.ns in t)
            return
        except Exception as e:
            _say(f"could not delete the topics of {spec.ns} ({e}); attempt {attempt + 1}/3")
            await asyncio.sleep(5)


def _say(msg: str) -> None:
    print(f"peers: {msg}", file=sys.stderr, flush=True)


def _plan(workloads: list[str]) -> list[tuple[str, float | None]]:
    plan: list[tuple[str, float | None]] = [(w, None) for w in THROUGHPUT_WORKLOADS
                                            if w in workloads]
    if "latency" in workloads:
        plan += [("latency", r) for r in RATES]
    return plan


Runs = dict[tuple[str, str, str, float | None], list[dict[str, Any]]]


async def _measure(args: argparse.Namespace, configs: list[tuple[str, str]],
                   plan: list[tuple[str, float | None]], seconds: float) -> Runs:
    """Every (workload, rate) of ``plan`` for every config, ``args.repeats`` times,
    interleaved in rotating order."""
    runs: Runs = {}
    for rep in range(args.repeats):
        for k, (workload, rate) in enumerate(plan):
            for system, settings in _rotate(configs, rep + k):
                t_run = time.monotonic()
                res = await _one(args, system, settings, workload, rate, seconds)
                runs.setdefault((workload, system, settings, rate), []).append(res)
                what = f"{workload}{f' {rate:.0f}/s' if rate else ''}"
                rps = res.get("records_per_s")
                bad = describe(run_problems(res, rate is not None))
                _say(f"repeat {rep + 1}/{args.repeats} {what:<14} {system}:{settings:<14} "
                     f"{f'{rps:,.0f} records/s' if rps else '-':>18}  "
                     f"p99={res.get('p99_ms')} cpu/M={_f(res.get('cpu_s_per_million'))} "
                     f"rss={res.get('rss_mb')} ({time.monotonic() - t_run:.0f} s) "
                     f"{res.get('note') or ''}{f' [does not count: {bad}]' if bad else ''}")
    return runs


def apply_defaults(args: argparse.Namespace) -> float:
    """Fill in what ``--quick`` (or its absence) implies; the seconds per latency rate.
    ``--repeats`` counts under ``--quick`` too: only its default differs (1, not 3)."""
    if args.repeats is None:
        args.repeats = 1 if args.quick else 3
    if args.quick:
        args.records = 200_000
        args.cap_seconds = args.cap_seconds or 30.0
    return float(args.seconds or (15.0 if args.quick else 30.0))


async def run(args: argparse.Namespace) -> dict[str, Any]:
    seconds = apply_defaults(args)
    # Fresh topics answer "not found"/"not leader" for a moment; aiokafka retries and warns.
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)
    configs = _configs(args)
    workloads = [w.strip() for w in args.workloads.split(",") if w.strip()]
    services.up(["kafka", "jaeger"] if any(c[1] == "tracing-1pct" for c in configs)
                else ["kafka"])
    args.out.mkdir(parents=True, exist_ok=True)
    t_start = time.monotonic()
    runs = await _measure(args, configs, _plan(workloads), seconds)
    rows = [_row(key, rs) for key, rs in runs.items()]
    vers = versions()
    for row in rows:
        row["version"] = vers[row["system"]]
    summary = write_reports(rows, args, seconds, time.monotonic() - t_start)
    for folded in sorted((args.out / "profiles").glob("*.txt")):
        if not folded.name.endswith(".top.txt") and folded.stat().st_size:
            folded.with_suffix(".top.txt").write_text(top_functions(folded))
    return {"out": str(args.out), "rows": len(rows), **summary}


def _f(v: float | None) -> str:
    return "-" if v is None else f"{v:.2f}"


def _med(xs: list[Any]) -> float | None:
    vals = [x for x in xs if x is not None]
    return round(statistics.median(vals), 3) if vals else None


def _row(key: tuple[str, str, str, float | None], rs: list[dict[str, Any]]) -> dict[str, Any]:
    workload, system, settings, rate = key
    latency = rate is not None
    sustained = all(r.get("sustained") for r in rs) if latency else None
    notes = sorted({r["note"] for r in rs if r.get("note")})
    return {
        "workload": workload, "rate": rate, "system": system, "settings": settings,
        "version": "", "records_per_s": _med([r.get("records_per_s") for r in rs]),
        "p50_ms": _med([r.get("p50_ms") for r in rs]) if sustained else None,
        "p99_ms": _med([r.get("p99_ms") for r in rs]) if sustained else None,
        "p999_ms": _med([r.get("p999_ms") for r in rs]) if sustained else None,
        "rss_mb": max((r["rss_mb"] for r in rs if r.get("rss_mb")), default=None),
        "cpu_s_per_million": _med([r.get("cpu_s_per_million") for r in rs]),
        "sustained": sustained, "repeats": len(rs),
        "runs_records_per_s": [None if r.get("records_per_s") is None
                               else round(r["records_per_s"]) for r in rs],
        "outputs": [r.get("outputs") for r in rs],
        "distinct": [r.get("distinct") for r in rs], "expected": rs[0].get("expected"),
        "capped": [bool(r.get("capped")) for r in rs],
        "errors": [r.get("errors") for r in rs],
        "logs": [r.get("log") for r in rs if r.get("log")],
        "problems": row_problems(rs, latency),
        "note": "; ".join(notes) or None,
    }
