"""The retail example end to end through `streamflow run`, on both transports."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from decimal import Decimal
from pathlib import Path

import orjson
import pytest

from streamflow import Settings

from .helpers import read_topic, values

# Computed by hand from examples/retail/data: amount x usd_per_unit, rounded to cents.
EXPECTED = {
    "2026-11-01": {
        "S1-0001": "43.09", "S1-0002": "129.60", "S2-0001": "64.77",
        "S3-0001": "32.16", "S4-0001": "210.50", "S4-0002": "12.25",
    },
    "2026-11-02": {"S1-0003": "16.19", "S5-0001": "58.40", "S4-0003": "99.00"},
}


def seed_landing(repo_root: Path, workdir: Path) -> None:
    landing = workdir / "landing"
    landing.mkdir(parents=True)
    for f in (repo_root / "examples/retail/data/landing").glob("*.csv"):
        (landing / f.name).write_bytes(f.read_bytes())
        old = time.time() - 5
        os.utime(landing / f.name, (old, old))


def run_cli(settings: Settings, workdir: Path, repo_root: Path, *args: str) -> dict[str, object]:
    env = {
        **os.environ,
        "RETAIL_WORKDIR": str(workdir),
        "STREAMFLOW_NAMESPACE": settings.namespace,
        "STREAMFLOW_STATE_DIR": str(settings.state_dir),
        "STREAMFLOW_PARTITIONS": str(settings.partitions),
    }
    env.pop("STREAMFLOW_KAFKA_BOOTSTRAP", None)
    if settings.kafka_bootstrap:
        env["STREAMFLOW_KAFKA_BOOTSTRAP"] = settings.kafka_bootstrap
    proc = subprocess.run(
        [sys.executable, "-m", "streamflow", "run", "examples/retail/pipeline.py:pipeline",
         "--json", *args],
        cwd=repo_root, env=env, capture_output=True, text=True, timeout=180,
    )
    assert proc.returncode == 0, proc.stderr
    summary: dict[str, object] = orjson.loads(proc.stdout.strip().splitlines()[-1])
    return summary


async def test_retail_end_to_end(settings: Settings, tmp_path: Path, repo_root: Path) -> None:
    workdir = tmp_path / "retail"
    seed_landing(repo_root, workdir)

    summary = run_cli(settings, workdir, repo_root)

    assert summary["transport"] == settings.transport
    # Out: nine sales in USD, and one daily report per day (the fan-in over the day's sales).
    assert (summary["records_in"], summary["records_out"], summary["dead_lettered"]) == (12, 11, 3)
    assert summary["drained"] is True
    reports = {r["day"]: r for f in sorted((workdir / "reports").glob("*.jsonl"))
               for r in map(orjson.loads, f.read_bytes().splitlines())}
    assert set(reports) == set(EXPECTED)
    for day, expected in EXPECTED.items():
        assert reports[day]["sales"] == len(expected), day
        assert Decimal(reports[day]["total_usd"]) == sum(map(Decimal, expected.values())), day
    assert reports["2026-11-01"]["stores"] == ["london-02", "nyc-04", "paris-01", "tokyo-03"]
    out = workdir / "out"
    assert sorted(p.name for p in out.glob("*.jsonl")) == [
        "usd_sales-2026-11-01.jsonl", "usd_sales-2026-11-02.jsonl"]
    for day, expected in EXPECTED.items():
        rows = [orjson.loads(line) for line in (out / f"usd_sales-{day}.jsonl").read_bytes()
                .splitlines()]
        got = {r["sale_id"]: r for r in rows}
        assert set(got) == set(expected), day
        for sale_id, usd in expected.items():
            r = got[sale_id]
            assert Decimal(r["amount_usd"]) == Decimal(usd), sale_id
            assert r["day"] == day
            assert Decimal(r["amount_usd"]) == (
                Decimal(r["amount"]) * Decimal(r["usd_per_unit"])).quantize(Decimal("0.01"))
    landing = workdir / "landing"
    assert sorted(p.name for p in (landing / "processed").iterdir()) == [
        "pos-2026-11-01.csv", "pos-2026-11-02.csv"]
    assert not list(landing.glob("*.csv"))

    # The output asset topic holds the same nine records, with arrival metadata in headers.
    usd = await read_topic(settings, f"{settings.namespace}.usd_sales")
    assert sorted(v["sale_id"] for v in values(usd)) == sorted(  # type: ignore[type-var]
        s for day in EXPECTED.values() for s in day)
    for m in usd:
        h = dict(m.headers)
        assert h["sf-asset"] == b"usd_sales" and h["sf-mode"] == b"live"
        assert h["sf-run"] and h["sf-arrival-id"]

    # Bad input went to the dead-letter topic with file, line and reason.
    dead = {str(v["reason"]): v for v in values(
        await read_topic(settings, settings.dead_letter_topic))}
    assert len(dead) == 3
    bad_number = next(v for r, v in dead.items() if "amount" in r and "decimal" in r)
    assert bad_number["origin"] == {"file": "pos-2026-11-02.csv", "line": 3}
    assert "'twelve'" in str(bad_number["reason"])
    missing = next(v for r, v in dead.items() if "missing column" in r)
    assert missing["origin"] == {"file": "pos-2026-11-02.csv", "line": 5}
    assert "amount, currency" in str(missing["reason"])
    stage_fail = next(v for r, v in dead.items() if "CHF" in r)
    assert stage_fail["stage"] == "to_usd"
    assert stage_fail["error"]["type"] == "ValueError"  # type: ignore[index]
    assert "Traceback" in stage_fail["error"]["traceback"]  # type: ignore[index]


async def test_second_run_with_nothing_new_changes_nothing(
    settings: Settings, tmp_path: Path, repo_root: Path
) -> None:
    workdir = tmp_path / "retail"
    seed_landing(repo_root, workdir)
    run_cli(settings, workdir, repo_root)
    before = {p.name: p.read_bytes() for p in (workdir / "out").glob("*.jsonl")}

    again = run_cli(settings, workdir, repo_root)

    assert (again["records_in"], again["records_out"], again["dead_lettered"]) == (0, 0, 0)
    assert {p.name: p.read_bytes() for p in (workdir / "out").glob("*.jsonl")} == before


@pytest.mark.parametrize("settings", ["embedded"], indirect=True)
def test_cli_errors_name_what_is_wrong(settings: Settings, repo_root: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "streamflow", "run", "examples/retail/nope.py:pipeline"],
        cwd=repo_root, capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode == 2
    assert "no such file: examples/retail/nope.py" in proc.stderr
