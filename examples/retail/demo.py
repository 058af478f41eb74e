"""Tell the retail story in a fresh work folder: a first run, then a correction that lands.

Runs on the embedded transport by default, or on Kafka when ``STREAMFLOW_KAFKA_BOOTSTRAP`` is
set. Safe to run again: each run gets a new folder under ``.streamflow/demo/`` and its own
namespace.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import sys
import time
from pathlib import Path

from streamflow_connector_files import read_rows

from streamflow import RunSummary, Settings, load_pipeline, run_pipeline
from streamflow.ops import list_dead_letters, list_runs

HERE = Path(__file__).resolve().parent


def seed(src: Path, dest: Path) -> None:
    for f in sorted(src.rglob("*.*")):
        target = dest / f.relative_to(src)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(f, target)
        old = time.time() - 5  # settled: the files source takes only files that stopped changing
        os.utime(target, (old, old))


def fresh_workdir() -> Path:
    workdir = Path(".streamflow/demo") / time.strftime("retail-%Y%m%d-%H%M%S")
    n = 0
    while workdir.exists():
        n += 1
        workdir = workdir.with_name(f"{workdir.name.split('.')[0]}.{n}")
    return workdir.resolve()


def main() -> int:
    logging.basicConfig(level=logging.WARNING, format="  %(message)s")
    for noisy in ("streamflow.engine", "streamflow.gates", "aiokafka"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    workdir = fresh_workdir()
    seed(HERE / "data" / "landing", workdir / "landing")
    os.environ["RETAIL_WORKDIR"] = str(workdir)  # read by the pipeline module at import
    pipeline = load_pipeline(str(HERE / "pipeline.py") + ":pipeline")
    namespace = "retail" + time.strftime("%H%M%S")
    settings = Settings.load(state_dir=workdir / "state", namespace=namespace, http_port="off")

    print(f"1. Three days of sales, orders, loyalty snapshots and inventory land in {workdir}")
    summary = asyncio.run(run_pipeline(pipeline, settings))
    report(summary, settings, workdir)

    print("\n2. The London store re-sends its bad line with the SKU fixed "
          "(data/corrections/pos-2026-11-03-fix.csv)")
    seed(HERE / "data" / "corrections", workdir / "landing" / "pos")
    summary = asyncio.run(run_pipeline(pipeline, settings))
    report(summary, settings, workdir)
    return 0


def report(summary: RunSummary, settings: Settings, workdir: Path) -> None:
    print(f"   on the {summary.transport} transport: {summary.records_in} records in, "
          f"{summary.records_out} written, {summary.dead_lettered} dead-lettered")
    for r in rows(workdir / "reports"):
        loyalty = (f"{r['loyalty_members']} loyalty members" if r["complete"]
                   else f"incomplete, missing {', '.join(r['missing'])}")
        print(f"   report {r['day']}: {r['pos_sales']} till sales {r['pos_usd']} USD + "
              f"{r['online_orders']} web orders {r['online_usd']} USD = {r['total_usd']} USD; "
              f"{loyalty}")
    for r in rows(workdir / "reconciliation"):
        print(f"   inventory {r['day']}: {r['units_sold']} sold, {r['units_out']} shipped: ok")
    runs = asyncio.run(list_runs(settings))
    for run in sorted((r for r in runs if r.status == "held"), key=lambda r: r.partition):
        why = "; ".join(str(c["detail"]) for c in run.checks or [] if not c["passed"])
        print(f"   HELD {run.stage} {run.partition}: {why} "
              f"(`streamflow runs retry {run.run_id[:12]}` after a fix)")
    dead = asyncio.run(list_dead_letters(settings))
    print(f"   dead letters ({settings.dead_letter_topic}):")
    for e in dead:
        print(f"     {e.id:<6} {e.kind:<6} {str(e.body.get('reason'))[:150]}")


def rows(folder: Path) -> list[dict[str, object]]:
    """What the files sink wrote under ``folder``, each key once (the latest row per _key)."""
    return read_rows(folder)


if __name__ == "__main__":
    sys.exit(main())
