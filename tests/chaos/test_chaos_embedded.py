"""Exactly once on the embedded transport under chaos (issue #5): one ``streamflow worker
--exactly-once`` process reads orders and payments from JSON Lines files that land at a steady
rate for 50 s, poison mixed in, and runs price → settle → PostgreSQL. Its process is SIGKILLed
and restarted three times, once by its own crash-before-commit hook (between a produce and its
commit). Then the SQLite log and the table must hold every output exactly once, and the dead
letters every poison record exactly once.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from .conftest import write_report
from .feed import Feeder, FileInput, make_plan
from .harness import CommitWatch, Fleet, jsonable, sqlite_lag
from .oracle import check, drop_table, judge, read_pg, read_sqlite
from .scenario import Chaos

pytestmark = pytest.mark.chaos

FLOW_S = 50.0
ORDERS = 6_000  # plus ~5,400 payments and the poison: ~12,400 records
POISON = 1_000
OVERSIZED = 40


@pytest.mark.timeout(600)
async def test_exactly_once_on_the_embedded_log_through_three_kills(
        pg_dsn: str, chaos_seed: int, tmp_path: Path) -> None:
    logging.getLogger("chaos").setLevel(logging.INFO)
    logging.getLogger("httpx").setLevel(logging.WARNING)
    rnd = random.Random(chaos_seed + 1)
    ns = "c" + uuid.uuid4().hex[:10]
    table = f"{ns}_settled"
    landing = tmp_path / "landing"
    db = tmp_path / "state" / "embedded.db"
    plan = make_plan(chaos_seed + 1, ORDERS, POISON, oversized=OVERSIZED)
    env = {"STREAMFLOW_NAMESPACE": ns, "STREAMFLOW_DRAIN_TIMEOUT_S": "20",
           "STREAMFLOW_MAX_RECORD_BYTES": "262144", "CHAOS_LANDING": str(landing),
           "CHAOS_PG_DSN": pg_dsn, "CHAOS_PG_TABLE": table}
    inputs = {f"{ns}.stage.price": [f"{ns}.orders"],
              f"{ns}.stage.settle": [f"{ns}.priced", f"{ns}.payments"],
              f"{ns}.sink.pg-settled": [f"{ns}.settled"]}
    fleet = Fleet(tmp_path, env, None)
    watch = CommitWatch(list(inputs), db=db)
    files = FileInput(landing)
    feeder = Feeder(plan, len(plan.events) / FLOW_S)
    chaos = Chaos(fleet, watch, feeder, rnd)
    started = time.time()
    feeding: asyncio.Task[None] | None = None
    report: dict[str, Any] = {"seed": chaos_seed, "namespace": ns, "transport": "embedded"}
    try:
        await fleet.wait_ready(fleet.start("w1"))
        watch.start()
        feeding = asyncio.create_task(feeder.run(files.send))
        chaos.t0 = feeder.started = time.time()
        steps = ["kills", "kill"]
        rnd.shuffle(steps)
        for step in steps:
            await chaos.gap(4, 9)
            if step == "kills":
                await chaos.kill_before_commit("w1")
            else:
                await chaos.kill("w1")
        await feeding
        report["flow_s"] = round(feeder.finished - feeder.started, 1)
        report["drain_s"] = await _drain(db, inputs, fleet, landing)
        chaos.exits["w1"] = await fleet.terminate(fleet.current["w1"])
        report.update(judge(plan, read_sqlite(db, ns), await read_pg(pg_dsn, table),
                            lambda key: 0))
    finally:
        report.update({"faults": jsonable(chaos.faults), "recovery_s": chaos.recovery,
                       "exit_codes": chaos.exits, "commit_watch_errors": watch.errors,
                       "suite_s": round(time.time() - started, 1)})
        if feeding is not None and not feeding.done():
            feeding.cancel()
        write_report("embedded", report)
        await fleet.close()
        await watch.stop()
        if os.environ.get("STREAMFLOW_CHAOS_KEEP") != "1":
            await drop_table(pg_dsn, table)
    print(f"\nchaos report (embedded, seed {chaos_seed}): "
          f"{ {k: report.get(k) for k in ('records', 'lost', 'duplicated', 'unexpected')} } "
          f"recovery_s={report['recovery_s']}")
    check(report, kills=3)
    assert report["exit_codes"] == {"w1": 0}, report["exit_codes"]


async def _drain(db: Path, inputs: dict[str, list[str]], fleet: Fleet, landing: Path,
                 timeout: float = 120) -> float:
    """Every landed file read and every group's input committed, twice in a row."""
    t0 = time.monotonic()
    clean = 0
    while time.monotonic() - t0 < timeout:
        fleet.check_alive()
        waiting = [f for asset in ("orders", "payments")
                   for f in (landing / asset).glob("*.jsonl")]
        claimed = [f for asset in ("orders", "payments")
                   for f in (landing / asset / ".claimed").glob("*")]
        idle = not waiting and not claimed and sqlite_lag(db, inputs) == 0
        clean = clean + 1 if idle else 0
        if clean >= 2:
            return round(time.monotonic() - t0, 1)
        await asyncio.sleep(1)
    raise AssertionError(f"not drained after {timeout}s")
