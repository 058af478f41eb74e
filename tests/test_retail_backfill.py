"""The retail backfill story (examples/retail/backfill.py) end to end, on the embedded transport:
a worker process and the backfill CLI process share one SQLite log.

October's till history (generated into landing/pos/processed/) is replayed beside November's
live orders; every October sale must come out exactly once in out/, converted as live would,
by a backfill run, and the live day's report must be unaffected.
"""

from __future__ import annotations

import asyncio
import csv
import os
import re
import subprocess
import sys
from decimal import Decimal
from pathlib import Path

from streamflow_connector_files import read_rows

from streamflow import Settings
from streamflow.ops import list_dead_letters, list_runs

FX = {"USD": Decimal("1.0"), "EUR": Decimal("1.08"), "GBP": Decimal("1.27"),
      "JPY": Decimal("0.0067"), "CAD": Decimal("0.73")}


def test_retail_backfill_story(repo_root: Path, tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items()
           if k != "STREAMFLOW_KAFKA_BOOTSTRAP" and not k.startswith("RETAIL_")}
    proc = subprocess.run([sys.executable, str(repo_root / "examples/retail/backfill.py")],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=150)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = proc.stdout
    (workdir,) = (tmp_path / ".streamflow/demo").iterdir()
    namespace = re.search(r"namespace (\S+)", out)
    job = re.search(r"backfill (bf-[0-9a-f]+): completed", out)
    assert namespace and job, out

    # Every October sale once in out/, in USD as the live path computes it.
    expected: dict[str, dict[str, Decimal]] = {}
    for f in sorted((workdir / "landing/pos/processed").glob("pos-2026-10-*.csv")):
        with f.open(newline="") as fh:
            expected[f.stem[4:]] = {
                r["sale_id"]: (Decimal(r["amount"]) * FX[r["currency"]]).quantize(
                    Decimal("0.01")) for r in csv.DictReader(fh)}
    assert len(expected) == 31
    for day, sales in expected.items():
        rows = read_rows(workdir / "out" / "pos_usd" / day)  # each key once, by the rule
        assert len(rows) == len(sales), day
        assert {r["sale_id"]: Decimal(str(r["amount_usd"])) for r in rows} == sales, day

    # The ledger: each October sale run once by to_usd, as a run of this backfill; every
    # October day closed by pos_daily; nothing dead-lettered.
    settings = Settings.load(state_dir=workdir / "state", namespace=namespace.group(1),
                             http_port="off")
    runs = asyncio.run(list_runs(settings))
    october = [r for r in runs if r.stage == "to_usd" and r.mode == "backfill"]
    assert len(october) == sum(len(s) for s in expected.values())
    assert {r.backfill for r in october} == {job.group(1)}
    assert all(r.status == "succeeded" for r in october)
    assert all(r.mode == "live" for r in runs if r.stage == "to_usd" and r not in october)
    days = {r.partition for r in runs if r.stage == "pos_daily" and r.status == "succeeded"}
    assert set(expected) <= days
    assert asyncio.run(list_dead_letters(settings)) == []

    # The live day is reported as without a backfill (tests/test_retail.py's figures); no
    # October report can fire without its (required) online-orders day.
    (report,) = read_rows(workdir / "reports/daily_sales/2026-11-01")
    assert report["pos_sales"] == 6
    assert Decimal(str(report["pos_usd"])) == Decimal("492.37")
    assert Decimal(str(report["online_usd"])) == Decimal("75.00")
    assert report["complete"] is True
    assert [p.name for p in (workdir / "reports").iterdir()] == ["daily_sales"]
    assert [p.name for p in (workdir / "reports/daily_sales").iterdir()] == ["2026-11-01"]
