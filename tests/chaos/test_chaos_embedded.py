"""Exactly once and at least once on the embedded transport under chaos (issue #5, issue 17
item 7): two ``streamflow worker`` processes, one ``--exactly-once`` and one in the default
at-least-once mode, each with its own SQLite log and namespace, read orders and payments from
JSON Lines files that land alike in both landing folders at a steady rate for 50 s, poison mixed
in, and run price → settle → PostgreSQL. The exactly-once process is SIGKILLed and restarted
three times, once by its own crash-before-commit hook (between a produce and its commit); the
at-least-once one after each, once the first has recovered (plain SIGKILLs). Then the
exactly-once log and table must hold every output exactly once, and the dead letters every
poison record exactly once; at least once, nothing may be lost, the table holds each key once,
and each kill duplicates at most what it left uncommitted or unacknowledged (``alo.py``; the
per-kill table is printed).
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import time
import uuid
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import orjson
import pytest

from .alo import (
    INPUTS,
    OUTPUTS,
    AtLeastOnce,
    check_at_least_once,
    claimed_records,
    per_kill,
    table,
)
from .conftest import write_report
from .feed import Event, Feeder, FileInput, Plan, make_plan
from .harness import CommitWatch, Fleet, jsonable, sqlite_lag
from .oracle import check, drop_table, judge, read_pg, read_sqlite, read_sqlite_messages
from .scenario import Chaos

pytestmark = pytest.mark.chaos

FLOW_S = 50.0
ORDERS = 6_000  # plus ~5,400 payments and the poison: ~12,400 records
POISON = 1_000
OVERSIZED = 40
POLL_BATCH = 500  # the worker's poll_batch (the default), for the per-kill table


@dataclass
class Side:
    """One worker of the scenario: its namespace, table, landing folder, log and groups."""

    ns: str
    table: str
    landing: Path
    db: Path
    inputs: dict[str, list[str]]
    fleet: Fleet
    watch: CommitWatch
    files: FileInput


def _side(pg_dsn: str, workdir: Path, exactly_once: bool) -> Side:
    ns = "c" + uuid.uuid4().hex[:10]
    landing, db = workdir / "landing", workdir / "state" / "embedded.db"
    env = {"STREAMFLOW_NAMESPACE": ns, "STREAMFLOW_DRAIN_TIMEOUT_S": "20",
           "STREAMFLOW_MAX_RECORD_BYTES": "262144", "CHAOS_LANDING": str(landing),
           "CHAOS_PG_DSN": pg_dsn, "CHAOS_PG_TABLE": f"{ns}_settled"}
    inputs = {f"{ns}.stage.price": [f"{ns}.orders"],
              f"{ns}.stage.settle": [f"{ns}.priced", f"{ns}.payments"],
              f"{ns}.sink.pg-settled": [f"{ns}.settled"]}
    workdir.mkdir(parents=True, exist_ok=True)
    return Side(ns, f"{ns}_settled", landing, db, inputs,
                Fleet(workdir, env, None, exactly_once=exactly_once),
                CommitWatch(list(inputs), db=db), FileInput(landing))


@pytest.mark.timeout(600)
async def test_exactly_once_and_at_least_once_on_the_embedded_log_through_three_kills(
        pg_dsn: str, chaos_seed: int, tmp_path: Path) -> None:
    logging.getLogger("chaos").setLevel(logging.INFO)
    logging.getLogger("httpx").setLevel(logging.WARNING)
    rnd = random.Random(chaos_seed + 1)
    plan = make_plan(chaos_seed + 1, ORDERS, POISON, oversized=OVERSIZED)
    eos = _side(pg_dsn, tmp_path / "eos", exactly_once=True)
    alo = _side(pg_dsn, tmp_path / "alo", exactly_once=False)
    feeder = Feeder(plan, len(plan.events) / FLOW_S)
    twin = AtLeastOnce(alo.fleet, alo.watch, partial(claimed_records, alo.landing))
    chaos = Chaos(eos.fleet, eos.watch, feeder, rnd, twin)
    started = time.time()
    feeding: asyncio.Task[None] | None = None
    report: dict[str, Any] = {"seed": chaos_seed, "namespace": eos.ns, "transport": "embedded"}
    try:
        await asyncio.gather(*(s.fleet.wait_ready(s.fleet.start("w1")) for s in (eos, alo)))
        for side in (eos, alo):
            side.watch.start()

        def send(chunk: list[Event]) -> None:
            eos.files.send(chunk)
            alo.files.send(chunk)

        feeding = asyncio.create_task(feeder.run(send))
        chaos.t0 = twin.t0 = feeder.started = time.time()
        await _faults(chaos, rnd)
        await feeding
        report["flow_s"] = round(feeder.finished - feeder.started, 1)
        report["drain_s"], report["at_least_once_drain_s"] = await asyncio.gather(
            *(_drain(s.db, s.inputs, s.fleet, s.landing) for s in (eos, alo)))
        chaos.exits["w1"] = await eos.fleet.terminate(eos.fleet.current["w1"])
        alo_exit = await alo.fleet.terminate(alo.fleet.current["w1"])
        await twin.settled()
        report.update(judge(plan, read_sqlite(eos.db, eos.ns), await read_pg(pg_dsn, eos.table),
                            lambda key: 0))
        report["at_least_once"] = await _judge_alo(plan, alo, twin, pg_dsn)
        report["at_least_once"]["exit_codes"] = {"w1": alo_exit}
    finally:
        report.update({"faults": jsonable(chaos.faults), "recovery_s": chaos.recovery,
                       "exit_codes": chaos.exits, "commit_watch_errors": eos.watch.errors,
                       "suite_s": round(time.time() - started, 1)})
        if feeding is not None and not feeding.done():
            feeding.cancel()
        write_report("embedded", report)
        for side in (eos, alo):
            await side.fleet.close()
            await side.watch.stop()
            if os.environ.get("STREAMFLOW_CHAOS_KEEP") != "1":
                await drop_table(pg_dsn, side.table)
    print(f"\nchaos report (embedded, seed {chaos_seed}): "
          f"{ {k: report.get(k) for k in ('records', 'lost', 'duplicated', 'unexpected')} } "
          f"recovery_s={report['recovery_s']}")
    print(f"at least once ({alo.ns}), per kill:\n{report['at_least_once']['table']}")
    check(report, kills=3)
    assert report["exit_codes"] == {"w1": 0}, report["exit_codes"]
    check_at_least_once(report["at_least_once"], kills=3)
    assert report["at_least_once"]["exit_codes"] == {"w1": 0}


async def _faults(chaos: Chaos, rnd: random.Random) -> None:
    """A kill, a kill plus the crash hook, in seeded order and at seeded times."""
    steps = ["kills", "kill"]
    rnd.shuffle(steps)
    for step in steps:
        await chaos.gap(4, 9)
        if step == "kills":
            await chaos.kill_before_commit("w1")
        else:
            await chaos.kill("w1")


async def _judge_alo(plan: Plan, alo: Side, twin: AtLeastOnce, pg_dsn: str) -> dict[str, Any]:
    outputs = tuple(n for n in OUTPUTS if n != "export.priced")  # no kafka sink here
    msgs = read_sqlite_messages(alo.db, alo.ns, (*INPUTS, *outputs))
    rows = {name: [orjson.loads(m.value) for m in msgs[name]] for name in outputs}
    out = judge(plan, rows, await read_pg(pg_dsn, alo.table), lambda key: 0)
    out["namespace"] = alo.ns
    out["kills"] = per_kill(twin.kills, alo.inputs, alo.ns, msgs, lambda key: 0)
    out["table"] = table(out["kills"], POLL_BATCH, 1)
    return out


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
