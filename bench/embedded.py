"""What durable commits cost the embedded log: ``synchronous=FULL`` (shipped) against ``NORMAL``.

Two workloads on the embedded transport, with the SQLite file on this machine's disk
(``--dir``): ``pipeline`` lands ``--files`` JSON Lines files of ``--per-file`` records, and a
files source, a map stage and a files sink run them to the end (``run_pipeline``, tracing
off, every commit and source ack as shipped); records/s is the records over the whole run.
``commits`` publishes ``--commits`` one-record batches, one SQLite transaction each: the worst
case, the cost of one fsync per commit. Variants are interleaved within each repeat, in
rotating order; medians are reported. A pipeline run whose output is not exactly its input
(by key) makes ``met`` false.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import orjson
from pydantic import BaseModel
from streamflow_connector_files import read_rows

from streamflow import Asset, Pipeline, Settings, run_pipeline
from streamflow.model import OutMessage
from streamflow.transports._embedded import EmbeddedTransport

VARIANTS = ("NORMAL", "FULL")


class Reading(BaseModel):
    id: str
    sensor: str
    value: float


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--files", type=int, default=40, help="landed files per pipeline run")
    parser.add_argument("--per-file", type=int, default=500, help="records per file")
    parser.add_argument("--commits", type=int, default=1000, help="one-record publishes")
    parser.add_argument("--repeats", type=int, default=5, help="runs of each variant")
    parser.add_argument("--dir", type=Path, default=Path(".streamflow/bench-embedded"),
                        help="working folder, on the disk a real state_dir would use")


def _land(landing: Path, files: int, per_file: int) -> int:
    landing.mkdir(parents=True)
    for f in range(files):
        rows = (orjson.dumps({"id": f"r{f}-{i}", "sensor": f"s{i % 50}", "value": i * 0.5})
                for i in range(per_file))
        (landing / f"part-{f:04d}.jsonl").write_bytes(b"\n".join(rows) + b"\n")
        old = time.time() - 5
        os.utime(landing / f"part-{f:04d}.jsonl", (old, old))
    return files * per_file


async def _pipeline_run(work: Path, files: int, per_file: int) -> tuple[float, str | None]:
    """(records/s, what the run lost or duplicated, if anything)."""
    n = _land(work / "landing", files, per_file)
    readings = Asset("readings", Reading, key="id")
    scaled = Asset("scaled", Reading, key="id")
    p = Pipeline("embedded-bench")
    p.source("files", asset=readings, path=work / "landing", format="jsonl", settle_s=0)

    @p.stage(inputs=[readings], output=scaled)
    def scale(r: Reading) -> Reading:
        return r.model_copy(update={"value": r.value * 2})

    p.sink("files", asset=scaled, path=work / "out", name="out")
    settings = Settings(state_dir=work / "state", namespace="b" + uuid.uuid4().hex[:8],
                        http_port=None)
    t0 = time.perf_counter()
    await run_pipeline(p, settings)
    elapsed = time.perf_counter() - t0
    rows = read_rows(work / "out")
    keys = {str(r["_key"]) for r in rows}
    bad = None if len(keys) == n == len(rows) else f"{n} in, {len(rows)} rows, {len(keys)} keys"
    return n / elapsed, bad


async def _commits_run(work: Path, n: int) -> float:
    """One-record publishes per second, each its own SQLite transaction."""
    t = EmbeddedTransport(work / "log.db")
    await t.start()
    try:
        await t.ensure_topics(["t"])
        t0 = time.perf_counter()
        for i in range(n):
            await t.publish([OutMessage("t", b'{"i": %d}' % i, b"k")])
        return n / (time.perf_counter() - t0)
    finally:
        await t.close()


async def _one(variant: str, root: Path, args: argparse.Namespace
               ) -> tuple[float, float, str | None]:
    EmbeddedTransport.synchronous = variant
    work = root / uuid.uuid4().hex[:8]
    try:
        rps, bad = await _pipeline_run(work / "p", args.files, args.per_file)
        (work / "c").mkdir()
        cps = await _commits_run(work / "c", args.commits)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return rps, cps, bad


async def run(args: argparse.Namespace) -> dict[str, Any]:
    shipped = EmbeddedTransport.synchronous
    rps: dict[str, list[float]] = {v: [] for v in VARIANTS}
    cps: dict[str, list[float]] = {v: [] for v in VARIANTS}
    lost: list[str] = []
    args.dir.mkdir(parents=True, exist_ok=True)
    try:
        for r in range(args.repeats):
            for v in VARIANTS[r % 2:] + VARIANTS[:r % 2]:
                p, c, bad = await _one(v, args.dir, args)
                rps[v].append(p)
                cps[v].append(c)
                lost += [f"{v} repeat {r + 1}: {bad}"] if bad else []
                print(f"embedded: repeat {r + 1}/{args.repeats} {v:>6}: {p:,.0f} records/s, "
                      f"{c:,.0f} commits/s{' (' + bad + ')' if bad else ''}", file=sys.stderr)
    finally:
        EmbeddedTransport.synchronous = shipped
    med_r = {v: statistics.median(xs) for v, xs in rps.items()}
    med_c = {v: statistics.median(xs) for v, xs in cps.items()}
    return {
        "records": args.files * args.per_file, "files": args.files, "repeats": args.repeats,
        "shipped": shipped,
        "pipeline_rps": {v: round(x) for v, x in med_r.items()},
        "pipeline_ratio": round(med_r["FULL"] / med_r["NORMAL"], 3),
        "commits_per_s": {v: round(x) for v, x in med_c.items()},
        "commit_ms": {v: round(1000 / x, 3) for v, x in med_c.items()},
        "runs": {"pipeline_rps": {v: [round(x) for x in xs] for v, xs in rps.items()},
                 "commits_per_s": {v: [round(x) for x in xs] for v, xs in cps.items()}},
        "lost_or_duplicated": lost,
        "target": "measured, not a floor: what FULL costs; every pipeline run delivers exactly "
                  "its input",
        "met": not lost,
    }
