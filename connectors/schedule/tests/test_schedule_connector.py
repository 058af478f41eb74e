"""The ``interval`` and ``cron`` tick sources: aligned deterministic ticks, resumable position."""

from __future__ import annotations

import itertools
from collections.abc import AsyncGenerator, AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson
import pytest
from pydantic import BaseModel
from streamflow_connector_files import read_rows
from streamflow_connector_schedule import (
    CronConfig,
    CronSource,
    IntervalConfig,
    IntervalSource,
    cron_tick_at_or_after,
    interval_tick_at_or_after,
)

from streamflow import Asset, ConnectorError, Pipeline, Settings, run_pipeline
from streamflow.connectors import ConnectorContext, SourceBatch, build_source


class Tick(BaseModel):
    tick: datetime
    scheduled_at: datetime
    name: str


TICKS = Asset("ticks", Tick, key="tick", partition_by="name")


class FakeClock:
    """A clock that only moves when the source sleeps (or the test jumps it)."""

    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


def _rows(out: Path) -> list[dict[str, object]]:
    return read_rows(out)


def _ticks_pipeline(out: Path, **config: object) -> Pipeline:
    p = Pipeline("ticker")
    p.source("interval", asset=TICKS, name="beat", **config)
    p.sink("files", asset=TICKS, path=out)
    return p


async def test_interval_ticks_end_to_end_then_resume_without_reemitting(
    settings: Settings, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    first = await run_pipeline(
        _ticks_pipeline(out, every_s=0.05, count=3, catch_up=True), settings)
    assert (first.records_in, first.records_out, first.dead_lettered) == (3, 3, 0)
    ticks = sorted(datetime.fromisoformat(str(r["tick"])) for r in _rows(out))
    assert len(ticks) == 3
    assert [b - a for a, b in itertools.pairwise(ticks)] == [timedelta(seconds=0.05)] * 2
    assert all(t.microsecond % 50_000 == 0 for t in ticks), "ticks align to the interval"
    assert {r["name"] for r in _rows(out)} == {"beat"}
    assert {r["_key"] for r in _rows(out)} == {str(t) for t in ticks}, "keyed by tick"

    # Restart with a larger count: acked ticks are not emitted again, and with catch_up the
    # ticks missed while the worker was down come next, none skipped.
    second = await run_pipeline(
        _ticks_pipeline(out, every_s=0.05, count=5, catch_up=True), settings)
    assert second.records_in == 2, "the three acknowledged ticks were not re-emitted"
    after = sorted(datetime.fromisoformat(str(r["tick"])) for r in _rows(out))
    assert after[:3] == ticks
    assert after[3:] == [ticks[-1] + timedelta(seconds=0.05), ticks[-1] + timedelta(seconds=0.1)]

    third = await run_pipeline(
        _ticks_pipeline(out, every_s=0.05, count=5, catch_up=True), settings)
    assert third.records_in == 0, "count is reached across restarts: the source just ends"


def test_tick_computation() -> None:
    t = datetime(2026, 1, 1, 10, 0, 30, 123, tzinfo=UTC)
    assert interval_tick_at_or_after(t, 60) == datetime(2026, 1, 1, 10, 1, tzinfo=UTC)
    assert interval_tick_at_or_after(t.replace(second=0, microsecond=0), 60) == \
        datetime(2026, 1, 1, 10, 0, tzinfo=UTC), "a tick exactly at t is t"
    anchor = datetime(2026, 1, 1, 9, 59, 45, tzinfo=UTC)
    assert interval_tick_at_or_after(t, 20, anchor) == datetime(2026, 1, 1, 10, 0, 45, tzinfo=UTC)
    assert interval_tick_at_or_after(datetime(2026, 1, 1, 0, 0, 0, 10_000), 0.05) == \
        datetime(2026, 1, 1, 0, 0, 0, 50_000, tzinfo=UTC), "naive means UTC; 0.05 s is exact"

    assert cron_tick_at_or_after(t, "* * * * *") == datetime(2026, 1, 1, 10, 1, tzinfo=UTC)
    minute = datetime(2026, 1, 1, 10, 0, tzinfo=UTC)
    assert cron_tick_at_or_after(minute, "* * * * *") == minute
    assert cron_tick_at_or_after(t, "*/15 * * * *") == datetime(2026, 1, 1, 10, 15, tzinfo=UTC)
    # 09:00 in Paris is 08:00 UTC in winter and 07:00 UTC in summer.
    assert cron_tick_at_or_after(t, "0 9 * * *", "Europe/Paris") == \
        datetime(2026, 1, 2, 8, 0, tzinfo=UTC)
    assert cron_tick_at_or_after(datetime(2026, 7, 1, tzinfo=UTC), "0 9 * * *",
                                 "Europe/Paris") == datetime(2026, 7, 1, 7, 0, tzinfo=UTC)


@pytest.mark.parametrize("expr", ["61 * * * *", "every minute", "* * *", ""])
async def test_invalid_cron_is_a_clear_error_at_setup(expr: str, tmp_path: Path) -> None:
    src = build_source("cron", {"schedule": expr})
    with pytest.raises(ConnectorError) as err:
        await src.setup(ConnectorContext("nightly", "ticks", str(tmp_path)))
    msg = str(err.value)
    assert f"invalid schedule {expr!r}" in msg and "'nightly'" in msg


def test_unknown_timezone_is_a_config_error() -> None:
    with pytest.raises(ConnectorError, match="unknown time zone 'Mars/Olympus'"):
        build_source("cron", {"schedule": "* * * * *", "timezone": "Mars/Olympus"})


async def _take(gen: AsyncGenerator[SourceBatch, None], src: IntervalSource | CronSource,
                n: int) -> list[list[str]]:
    """Read ``n`` batches the way the engine does: each one acked before the next."""
    got = []
    for _ in range(n):
        batch = await anext(gen)
        got.append([str(r.data["tick"]) for r in batch.records])
        assert [r.record_id for r in batch.records] == [
            f"{src.name}:{t}" for t in got[-1]], "record id is <name>:<tick>"
        await src.ack(batch)
    return got


async def test_cron_source_with_an_injected_clock_resumes_and_catches_up(tmp_path: Path) -> None:
    ctx = ConnectorContext("every-minute", "ticks", str(tmp_path / "state"))
    clock = FakeClock(datetime(2026, 1, 1, 10, 0, 30, tzinfo=UTC))

    def source(catch_up: bool) -> CronSource:
        cfg = CronConfig(schedule="* * * * *", catch_up=catch_up)
        return CronSource(cfg, clock=clock, sleep=clock.sleep)

    src = source(catch_up=True)
    await src.setup(ctx)
    gen = src.read()
    assert await _take(gen, src, 2) == [["2026-01-01T10:01:00+00:00"],
                                        ["2026-01-01T10:02:00+00:00"]]
    assert clock.now == datetime(2026, 1, 1, 10, 2, tzinfo=UTC), "it slept until each tick"
    batch = await anext(gen)  # emitted, never acked: it must come again after a restart
    assert batch.records[0].data["tick"] == "2026-01-01T10:03:00+00:00"
    await gen.aclose()
    await src.stop()
    state = orjson.loads((tmp_path / "state" / "every-minute.ticks.json").read_bytes())
    assert state == {"last_tick": "2026-01-01T10:02:00+00:00", "acked": 2}

    clock.now = datetime(2026, 1, 1, 10, 5, 30, tzinfo=UTC)  # down for three minutes
    src = source(catch_up=True)
    await src.setup(ctx)
    gen = src.read()
    assert await _take(gen, src, 1) == [[f"2026-01-01T10:0{m}:00+00:00" for m in (3, 4, 5)]]
    await gen.aclose()

    clock.now = datetime(2026, 1, 1, 10, 9, 10, tzinfo=UTC)  # down again; no catch-up now
    src = source(catch_up=False)
    await src.setup(ctx)
    gen = src.read()
    assert await _take(gen, src, 2) == [["2026-01-01T10:09:00+00:00"],
                                        ["2026-01-01T10:10:00+00:00"]]
    await gen.aclose()


async def test_cron_tick_record_shape_and_timezone(tmp_path: Path) -> None:
    clock = FakeClock(datetime(2026, 1, 1, 7, 59, tzinfo=UTC))
    src = CronSource(CronConfig(schedule="0 9 * * *", timezone="Europe/Paris", name="daily"),
                     clock=clock, sleep=clock.sleep)
    await src.setup(ConnectorContext("cron-ticks", "ticks", str(tmp_path)))
    gen = src.read()
    batch = await anext(gen)
    await gen.aclose()
    rec = batch.records[0]
    assert rec.data == {"tick": "2026-01-01T08:00:00+00:00",
                        "scheduled_at": "2026-01-01T09:00:00+01:00", "name": "daily"}
    assert rec.record_id == "daily:2026-01-01T08:00:00+00:00"
    Tick.model_validate(rec.data)


async def test_interval_count_and_start_without_waiting(tmp_path: Path) -> None:
    clock = FakeClock(datetime(2026, 5, 1, 12, 0, tzinfo=UTC))
    cfg = IntervalConfig(every_s=3600, start=datetime(2026, 5, 1, 9, 30), count=4,
                         catch_up=True)
    src = IntervalSource(cfg, clock=clock, sleep=clock.sleep)
    await src.setup(ConnectorContext("hourly", "ticks", str(tmp_path)))
    batches = [b async for b in _acking(src)]
    ticks = [str(r.data["tick"]) for b in batches for r in b.records]
    assert ticks == [f"2026-05-01T{h}:30:00+00:00" for h in ("09", "10", "11", "12")]
    assert len(batches) == 2, "the three missed ticks come as one catch-up batch"


async def _acking(src: IntervalSource) -> AsyncIterator[SourceBatch]:
    async for batch in src.read():
        yield batch
        await src.ack(batch)
