"""The retail example end to end through `streamflow run`, on both transports."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import orjson
import pytest
from streamflow_connector_files import read_rows

from streamflow import Settings
from streamflow.ops import list_dead_letters, list_runs

# Computed by hand from examples/retail/data: amount x usd_per_unit, rounded to cents.
POS = {
    "2026-11-01": {
        "S1-0001": "43.09", "S1-0002": "129.60", "S2-0001": "64.77",
        "S3-0001": "32.16", "S4-0001": "210.50", "S4-0002": "12.25",
    },
    "2026-11-02": {"S1-0003": "16.19", "S5-0001": "58.40", "S4-0003": "99.00"},
    "2026-11-03": {"S1-0004": "21.55", "S2-0003": "114.30", "S4-0004": "9.80"},
}
ONLINE = {"2026-11-01": ["21.00", "54.00"], "2026-11-02": ["118.00", "38.10"],
          "2026-11-03": ["40.00"]}
LOYALTY = {"2026-11-01": (1225, 9100), "2026-11-03": (1251, 8800)}  # 2026-11-02: none came


def seed_landing(repo_root: Path, workdir: Path, folder: str = "landing",
                 into: str = "landing") -> None:
    src = repo_root / "examples/retail/data" / folder
    for f in src.rglob("*.*"):
        target = workdir / into / f.relative_to(src)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(f.read_bytes())
        old = time.time() - 5
        os.utime(target, (old, old))


def run_cli(settings: Settings, workdir: Path, repo_root: Path, *args: str,
            env: dict[str, str] | None = None) -> dict[str, object]:
    environ = {
        **os.environ,
        "RETAIL_WORKDIR": str(workdir),
        "STREAMFLOW_NAMESPACE": settings.namespace,
        "STREAMFLOW_STATE_DIR": str(settings.state_dir),
        "STREAMFLOW_PARTITIONS": str(settings.partitions),
        "STREAMFLOW_HTTP_PORT": "0",
        **(env or {}),
    }
    environ.pop("STREAMFLOW_KAFKA_BOOTSTRAP", None)
    if settings.kafka_bootstrap:
        environ["STREAMFLOW_KAFKA_BOOTSTRAP"] = settings.kafka_bootstrap
    proc = subprocess.run(
        [sys.executable, "-m", "streamflow", "run", "examples/retail/pipeline.py:pipeline",
         "--json", *args],
        cwd=repo_root, env=environ, capture_output=True, text=True, timeout=180,
    )
    assert proc.returncode == 0, proc.stderr
    summary: dict[str, object] = orjson.loads(proc.stdout.strip().splitlines()[-1])
    return summary


def jsonl(folder: Path) -> dict[str, dict[str, Any]]:
    return {str(r.get("sale_id") or r["day"]): r for r in read_rows(folder)}


class AlertReceiver:
    """A webhook endpoint on loopback that answers 503 once, then takes every alert."""

    def __init__(self) -> None:
        self.alerts: list[dict[str, Any]] = []
        self.refused = 0
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                if outer.refused == 0:
                    outer.refused += 1
                    self.send_response(503)
                else:
                    outer.alerts.append(orjson.loads(body))
                    self.send_response(200)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                return None

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/alerts"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()


def check_day(reports: dict[str, dict[str, Any]], day: str) -> None:
    r = reports[day]
    pos = POS[day]
    assert (r["pos_sales"], Decimal(r["pos_usd"])) == (len(pos), sum(map(Decimal, pos.values())))
    online = ONLINE[day]
    assert (r["online_orders"], Decimal(r["online_usd"])) == (
        len(online), sum(map(Decimal, online)))
    assert Decimal(r["total_usd"]) == Decimal(r["pos_usd"]) + Decimal(r["online_usd"])
    if day in LOYALTY:
        assert (r["loyalty_members"], r["loyalty_points"]) == LOYALTY[day], day
        assert r["complete"] is True and r["missing"] == []
    else:  # the snapshot never came: the deadline policy fired the report without it
        assert (r["loyalty_members"], r["complete"], r["missing"]) == (
            None, False, ["loyalty_day"])


async def test_retail_story_day_by_day(settings: Settings, tmp_path: Path,
                                       repo_root: Path) -> None:
    workdir = tmp_path / "retail"
    seed_landing(repo_root, workdir)
    hook = AlertReceiver()
    env = {"STREAMFLOW_ALERT_WEBHOOK": hook.url}
    try:
        summary = run_cli(settings, workdir, repo_root, env=env)

        assert summary["transport"] == settings.transport and summary["drained"] is True
        assert summary["records_in"] == 15 + 5 + 5 + 3  # till lines, orders, snapshots, days
        reports = jsonl(workdir / "reports")
        # Day 1 is complete; day 2 went out at its deadline without the loyalty snapshot;
        # day 3 is held by the POS gate (a malformed SKU), so its report waits.
        assert sorted(reports) == ["2026-11-01", "2026-11-02"]
        check_day(reports, "2026-11-01")
        check_day(reports, "2026-11-02")
        recon = jsonl(workdir / "reconciliation")
        assert sorted(recon) == ["2026-11-01"]  # day 2 diverged; day 3 waits for its POS day
        assert (recon["2026-11-01"]["units_sold"], recon["2026-11-01"]["units_out"]) == (17, 17)

        # Standardised sales: in USD, with product metadata, from both channels.
        sales = jsonl(workdir / "out")
        for expected in POS.values():
            for sale_id, usd in expected.items():
                assert Decimal(sales[sale_id]["amount_usd"]) == Decimal(usd), sale_id
        assert sales["S1-0001"]["product"] == "Espresso beans 1kg"
        assert sales["O-1002"]["channel"] == "online" and sales["O-1002"]["amount_usd"] == "54.00"

        # Two gates held a partition each, alerted once each (the webhook retried past a 503).
        held = {(a["stage"], a["partition"]) for a in hook.alerts if a["kind"] == "gate-held"}
        assert held == {("pos_daily", "2026-11-03"), ("reconcile_inventory", "2026-11-02")}
        assert len(hook.alerts) == 2 and hook.refused == 1
        inv = next(a for a in hook.alerts if a["stage"] == "reconcile_inventory")
        assert "warehouse shipped 19 units, the tills and web sold 12" in inv["summary"]
        runs = {(r.stage, r.partition): r for r in await list_runs(settings)
                if r.status == "held"}
        assert set(runs) == held
        failed = {c["check"] for c in runs[("pos_daily", "2026-11-03")].checks or []
                  if not c["passed"]}
        assert failed == {"pattern(sku)", "not_null(product)"}

        # The bad line is quarantined with the checks and its values, beside the source's and
        # the stage's dead letters.
        dead = await list_dead_letters(settings)
        line = next(e for e in dead if e.kind == "gate" and not e.replayable)
        assert "sale_id='S2-0003'" in str(line.body["reason"])
        values = {c["check"]: c["values"] for c in line.body["error"]["checks"]}
        assert values["pattern(sku)"] == ["SKU_220"]
        reasons = [str(e.body["reason"]) for e in dead if e.kind != "gate"]
        assert len(reasons) == 3
        assert any("'twelve'" in r and "[contract PosSale v1]" in r for r in reasons)
        assert any("missing column(s) amount, currency" in r for r in reasons)
        assert any("no FX rate for CHF" in r for r in reasons)

        # The store re-sends the line with its SKU fixed: day 3 is released and reported.
        seed_landing(repo_root, workdir, "corrections", "landing/pos")
        again = run_cli(settings, workdir, repo_root, env=env)

        assert again["records_in"] == 1
        reports = jsonl(workdir / "reports")
        assert sorted(reports) == ["2026-11-01", "2026-11-02", "2026-11-03"]
        for day in POS:
            check_day(reports, day)
        assert sorted(jsonl(workdir / "reconciliation")) == ["2026-11-01", "2026-11-03"]
        released = [a for a in hook.alerts if a["kind"] == "gate-released"]
        assert [(a["stage"], a["partition"]) for a in released] == [("pos_daily", "2026-11-03")]
        assert len(hook.alerts) == 3  # nothing alerted twice
    finally:
        hook.close()


async def test_second_run_with_nothing_new_changes_nothing(
    settings: Settings, tmp_path: Path, repo_root: Path
) -> None:
    workdir = tmp_path / "retail"
    seed_landing(repo_root, workdir)
    run_cli(settings, workdir, repo_root)
    before = {p: p.read_bytes() for p in workdir.rglob("*.jsonl") if "landing" not in p.parts}

    again = run_cli(settings, workdir, repo_root)

    assert (again["records_in"], again["records_out"], again["dead_lettered"]) == (0, 0, 0)
    assert {p: p.read_bytes() for p in workdir.rglob("*.jsonl")
            if "landing" not in p.parts} == before


@pytest.mark.parametrize("settings", ["embedded"], indirect=True)
def test_cli_errors_name_what_is_wrong(settings: Settings, repo_root: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "streamflow", "run", "examples/retail/nope.py:pipeline"],
        cwd=repo_root, capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode == 2
    assert "no such file: examples/retail/nope.py" in proc.stderr
