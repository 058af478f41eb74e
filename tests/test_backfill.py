"""Backfills beside live traffic: overlap runs each input once; a crashed driver resumes.

Both transports. The pipeline is ``tests/pipelines/backfill.py``: a day-partitioned order
feed (live: a day every half second; history: any range at once) → ``price`` → ``priced``,
delivered to PostgreSQL.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest

from streamflow import Settings, Worker
from streamflow.backfill import load_jobs
from streamflow.cli import main as cli_main
from streamflow.cli._backfill import start_backfill
from streamflow.model import (
    H_BACKFILL,
    H_MODE,
    Message,
    done_runs_topic,
    lane_topic,
    mode_of,
    runs_topic,
)
from streamflow.state import fold_raw, merge
from streamflow.transports import make_transport

from . import faults
from .helpers import read_topic
from .pipelines.backfill import make_pipeline

ROOT = Path(__file__).resolve().parent.parent
TARGET = str(ROOT / "tests" / "pipelines" / "backfill.py") + ":pipeline"
DAYS, PER_DAY = 12, 30


@pytest.fixture(scope="module")
def postgres_dsn() -> str:
    from streamflow import devservices as services

    services.up(["postgres"])
    return services.POSTGRES_DSN


async def _pg(dsn: str, sql: str) -> list[dict[str, Any]]:
    import asyncpg

    conn = await asyncpg.connect(dsn)
    try:
        return [dict(r) for r in await conn.fetch(sql)]
    finally:
        await conn.close()


async def _outputs(settings: Settings, want: int, timeout: float = 60) -> list[Message]:
    """The ``priced`` topic once it holds ``want`` records (or the timeout passed)."""
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while True:
        msgs = await read_topic(settings, f"{settings.namespace}.priced")
        if len(msgs) >= want or loop.time() > end:
            return msgs
        await asyncio.sleep(0.3)


def _day(n: int) -> datetime:
    return datetime(2026, 10, 1 + n, tzinfo=UTC)


async def test_backfill_overlapping_live_runs_each_input_once(
        settings: Settings, postgres_dsn: str, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    """Live data arrives a day at a time while a backfill replays days 3..10 of the same feed:
    every order ends up exactly once in the output topic and once in PostgreSQL, some run by
    each lane, and the ledger holds one final run per order. Every run's OpenLineage events
    went to a file, and ``streamflow lineage`` shows a day's runs by mode."""
    table = f"bf_{settings.namespace}"
    events = tmp_path / "lineage.jsonl"
    settings = settings.model_copy(update={"lineage": f"file:{events}"})
    pipe = make_pipeline(DAYS, PER_DAY, 0.5, table, postgres_dsn)
    worker = Worker(pipe, settings, serve=True)
    task = asyncio.create_task(worker.run())
    try:
        job = await asyncio.wait_for(start_backfill(
            pipe, "orders", _day(3), _day(11), settings=settings, max_concurrency=2), 90)
        assert job.status == "completed"
        assert job.keys_total == 8 and job.keys_done == 8
        assert job.records_total + sum(s.skipped for s in job.slices) == 8 * PER_DAY
        out = await _outputs(settings, DAYS * PER_DAY)
        await asyncio.sleep(1.0)  # a duplicate would show up after the count is reached
        out = await read_topic(settings, f"{settings.namespace}.priced")
    finally:
        worker.request_stop()
        summary = await asyncio.wait_for(task, 60)
    assert summary.drained

    keys = Counter((m.key or b"").decode() for m in out)
    assert len(keys) == DAYS * PER_DAY
    assert [k for k, n in keys.items() if n > 1] == []
    modes = Counter(mode_of(dict(m.headers).get(H_MODE)) for m in out)
    assert modes["live"] > 0 and modes["backfill"] > 0, modes
    assert {dict(m.headers).get(H_BACKFILL, b"").decode() for m in out
            if mode_of(dict(m.headers).get(H_MODE)) == "backfill"} == {job.id}
    # Only days 3..10 can have been run by the backfill.
    days = {orjson.loads(m.value)["day"] for m in out
            if mode_of(dict(m.headers).get(H_MODE)) == "backfill"}
    assert days <= {_day(n).date().isoformat() for n in range(3, 11)}

    rows = await _pg(postgres_dsn, f"SELECT _key, _arrival_id FROM {table}")
    assert len(rows) == DAYS * PER_DAY
    arrival_of = {(m.key or b"").decode(): dict(m.headers)["sf-arrival-id"].decode()
                  for m in out}
    assert {r["_key"]: r["_arrival_id"] for r in rows} == arrival_of

    ledger = merge(
        fold_raw(await read_topic(settings, runs_topic(settings.namespace))),
        fold_raw(await read_topic(settings, done_runs_topic(settings.namespace))))
    price = [d for d in ledger.values() if d["stage"] == "price"]
    assert len(price) == DAYS * PER_DAY
    assert all(d["status"] == "succeeded" for d in price)
    assert sum(d["mode"] == "backfill" for d in price) == modes["backfill"]
    assert {d["backfill"] for d in price if d["mode"] == "backfill"} == {job.id}
    await _pg(postgres_dsn, f"DROP TABLE {table}")

    # OpenLineage: START then COMPLETE for every run, the backfill id as a run facet.
    lines = [orjson.loads(x) for x in events.read_text().splitlines()]
    by_run: dict[str, list[str]] = {}
    for e in lines:
        assert e["job"]["name"] == "backfill.price"
        assert [d["name"] for d in e["inputs"]] == ["orders"]
        assert [d["name"] for d in e["outputs"]] == ["priced"]
        facet = e["run"]["facets"]["streamflow"]
        assert facet.get("backfill") == (job.id if facet["mode"] == "backfill" else None)
        by_run.setdefault(facet["run_id"], []).append(e["eventType"])
    assert len(by_run) == DAYS * PER_DAY
    assert all(types == ["START", "COMPLETE"] for types in by_run.values())

    # The upstream tree of a day that both lanes may have run: every run, with its mode.
    day = _day(5).date().isoformat()
    capsys.readouterr()
    rc = await asyncio.to_thread(cli_main, [
        "lineage", "priced", day, "--json", "--namespace", settings.namespace, "--state-dir",
        str(settings.state_dir),
        *(["--kafka", settings.kafka_bootstrap] if settings.kafka_bootstrap else [])])
    assert rc == 0
    tree = orjson.loads(capsys.readouterr().out)
    assert (tree["asset"], tree["partition"]) == ("priced", day)
    (stage,) = tree["stages"]
    ran = [m for m in out if orjson.loads(m.value)["day"] == day]
    assert stage["stage"] == "price" and stage["count"] == PER_DAY
    assert stage["modes"] == dict(Counter(mode_of(dict(m.headers).get(H_MODE)) for m in ran))
    assert [u["asset"] for u in stage["upstream"]] == ["orders"]
    assert stage["upstream"][0]["source"]


def _cli(settings: Settings, *args: str, env: dict[str, str] | None = None,
         ) -> subprocess.CompletedProcess[str]:
    argv = ["backfill", *args, "--namespace", settings.namespace,
            "--state-dir", str(settings.state_dir)]
    if settings.kafka_bootstrap:
        argv += ["--kafka", settings.kafka_bootstrap]
    cmd = faults.command(argv, env or {})  # the test-only entry point if a fault is asked for
    full = faults.subprocess_env({**os.environ, "BACKFILL_DAYS": str(DAYS),
                                  "BACKFILL_PER_DAY": str(PER_DAY), **(env or {})})
    full.pop("STREAMFLOW_KAFKA_BOOTSTRAP", None)
    return subprocess.run(cmd, env=full, capture_output=True, text=True, timeout=120)


async def test_backfill_resumes_after_its_driver_crashed(settings: Settings) -> None:
    """The driver is SIGKILLed once 4 of 10 days are done; ``resume`` replays only the rest
    and every order comes out exactly once, all of them by the backfill."""
    pipe = make_pipeline(DAYS, PER_DAY, 0.5)
    worker = Worker(pipe, settings, serve=True, sources=False)  # no live data this time
    task = asyncio.create_task(worker.run())
    try:
        crashed = await asyncio.to_thread(
            _cli, settings, "start", TARGET, "--asset", "orders", "--from", "2026-10-02",
            "--to", "2026-10-12", "--max-concurrency", "1", "--json",
            env={faults.BACKFILL_CRASH_AFTER: "4"})
        assert crashed.returncode == -9, crashed.stderr
        t = make_transport(settings)
        await t.start()
        try:
            (job,) = (await load_jobs(t, settings.namespace)).values()
        finally:
            await t.close()
        assert job.status == "running" and job.keys_done == 4
        listed = await asyncio.to_thread(_cli, settings, "list", "--json")
        assert orjson.loads(listed.stdout)[0]["partitions_done"] == 4

        resumed = await asyncio.to_thread(_cli, settings, "resume", job.id[:6], "--json")
        assert resumed.returncode == 0, resumed.stderr
        done = orjson.loads(resumed.stdout)
        assert done["status"] == "completed"
        assert done["partitions_done"] == done["partitions_total"] == 10
        status = await asyncio.to_thread(_cli, settings, "status", job.id, "--json")
        assert orjson.loads(status.stdout)["runs"] == {"succeeded": 10 * PER_DAY}
        out = await _outputs(settings, 10 * PER_DAY)
    finally:
        worker.request_stop()
        await asyncio.wait_for(task, 60)
    keys = Counter((m.key or b"").decode() for m in out)
    assert len(keys) == 10 * PER_DAY and max(keys.values()) == 1
    assert {mode_of(dict(m.headers).get(H_MODE)) for m in out} == {"backfill"}
    # The four finished days were not published again; the one in flight may have been.
    lane = await read_topic(settings, lane_topic(settings.namespace, "orders"))
    assert 10 * PER_DAY <= len(lane) <= 11 * PER_DAY
