"""Barriers on both transports: once per partition, durable across restarts, deadlines."""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel, computed_field

from streamflow import (
    AllOf,
    AnyOf,
    Arrival,
    Asset,
    Inputs,
    Pipeline,
    Settings,
    Worker,
    run_pipeline,
    stable_id,
)
from streamflow.connectors.testing import IdleSource, MemorySink
from streamflow.ops import list_dead_letters, list_runs, replay
from streamflow.transports import make_transport

from .helpers import memory_source, read_topic, values


class Sale(BaseModel):
    id: int
    day: str
    amount: float


class Rate(BaseModel):
    id: str
    day: str
    usd: float


class Report(BaseModel):
    day: str
    total_usd: float
    inputs: list[str]


sales = Asset("sales", Sale, key="id", partition_by="day")
rates = Asset("rates", Rate, key="id", partition_by="day")
reports = Asset("reports", Report, key="day", partition_by="day")


def report(inputs: Inputs) -> Report:
    sale = inputs["sales"]
    rate = inputs.get("rates")
    assert isinstance(sale, Sale)
    usd = rate.usd if isinstance(rate, Rate) else 1.0
    return Report(day=inputs.partition, total_usd=round(sale.amount * usd, 2),
                  inputs=sorted(inputs))


Out = dict[str, dict[str, Any]]


@pytest.fixture
def out() -> Out:
    """What the memory sink stored, shared by the runs (restarts) of one test."""
    return {}


def barrier_pipeline(sale_batches: list[list[dict[str, object]]],
                     rate_batches: list[list[dict[str, object]]], out: Out,
                     trigger: AllOf | AnyOf) -> Pipeline:
    p = Pipeline("barrier")
    p.source(memory_source(sale_batches), asset=sales, name="sales-src")
    p.source(memory_source(rate_batches), asset=rates, name="rates-src")
    p.stage(inputs=[sales, rates], output=reports, name="report", trigger=trigger)(report)
    p.sink(MemorySink(out), asset=reports)
    return p


def out_rows(out: Out) -> dict[str, dict[str, object]]:
    return {str(r["day"]): r for r in out.values()}


def sale(i: int, day: str) -> dict[str, object]:
    return {"id": i, "day": day, "amount": 10.0 * i}


def rate(day: str, usd: float = 2.0) -> dict[str, object]:
    return {"id": f"r-{day}", "day": day, "usd": usd}


async def test_barrier_fires_once_per_partition_whatever_order_and_duplicates(
    settings: Settings, out: Out
) -> None:
    days = [f"2026-11-{d:02d}" for d in range(1, 7)]
    sale_batches = [[sale(i + 1, d) for i, d in enumerate(days[:3])],
                    [sale(1, days[0])],  # a duplicate
                    [sale(i + 4, d) for i, d in enumerate(days[3:])]]
    rate_batches = [[rate(d) for d in reversed(days)], [rate(days[2]), rate(days[5])]]
    summary = await run_pipeline(
        barrier_pipeline(sale_batches, rate_batches, out, AllOf()), settings)

    rows = out_rows(out)
    assert sorted(rows) == days
    assert all(r["inputs"] == ["rates", "sales"] for r in rows.values())
    assert rows[days[0]]["total_usd"] == 20.0
    assert summary.runs == 6
    runs = await list_runs(settings)
    assert sorted(r.partition for r in runs) == days
    assert all(r.status == "succeeded" and len(r.inputs) == 2 for r in runs)
    out = await read_topic(settings, f"{settings.namespace}.reports")
    assert len(out) == 6, "exactly one report per day on the output topic"


async def test_a_restart_mid_barrier_neither_forgets_nor_fires_twice(
    settings: Settings, out: Out
) -> None:
    days = ["d1", "d2"]
    first = await run_pipeline(barrier_pipeline(
        [[sale(1, "d1"), sale(2, "d2")]], [], out, AllOf()), settings)
    assert first.runs == 0 and not out_rows(out)

    # A new worker (fresh process state): the open barriers come back from the changelog.
    second = await run_pipeline(barrier_pipeline(
        [], [[rate("d1"), rate("d2")]], out, AllOf()), settings)
    assert second.runs == 2 and sorted(out_rows(out)) == days

    third = await run_pipeline(barrier_pipeline(
        [[sale(1, "d1")]], [[rate("d1")]], out, AllOf()), settings)
    assert third.runs == 0, "redelivered inputs of a fired barrier fire nothing"
    assert len(await list_runs(settings)) == 2


@pytest.mark.parametrize("policy", ["fire", "skip", "fail"])
async def test_each_deadline_policy(settings: Settings, out: Out, policy: str,
                                    caplog: pytest.LogCaptureFixture) -> None:
    trigger = AllOf(deadline_s=0.5, on_deadline=policy)  # type: ignore[arg-type]
    with caplog.at_level(logging.WARNING, logger="streamflow.alerts"):
        await run_pipeline(barrier_pipeline([[sale(3, "d1")]], [], out, trigger), settings)
    await asyncio.sleep(0.6)
    with caplog.at_level(logging.WARNING, logger="streamflow.alerts"):
        # (On a slow machine the deadline may already pass while the first worker drains.)
        await run_pipeline(barrier_pipeline([], [], out, trigger), settings)

    (run,) = await list_runs(settings)
    if policy == "fire":
        assert run.status == "succeeded" and [i.asset for i in run.inputs] == ["sales"]
        assert out_rows(out)["d1"]["inputs"] == ["sales"]
    elif policy == "skip":
        assert run.status == "skipped" and not out_rows(out)
        assert "ALERT stage report: barrier for partition 'd1' skipped" in caplog.text
        assert "missing: rates" in caplog.text
    else:
        assert run.status == "dead-lettered"
        (dead,) = await list_dead_letters(settings)
        assert "missed its deadline; missing inputs: rates" in str(dead.body["reason"])
        assert dead.replayable
        # After the fix (here: accepting the partial input), the replay runs the barrier.
        await replay(settings, [dead])
        again = await run_pipeline(barrier_pipeline([], [], out, trigger), settings)
        assert again.runs == 1 and out_rows(out)["d1"]["inputs"] == ["sales"]


async def test_any_of_fires_on_each_new_input(settings: Settings, out: Out) -> None:
    summary = await run_pipeline(barrier_pipeline(
        [[sale(1, "d1")]], [[rate("d1")], [rate("d1")]], out, AnyOf()), settings)
    # The first input alone fires (a rate without its sale fails: report needs the sale);
    # the other input fires again with both; the duplicated rate fires nothing.
    assert summary.runs == 2 and summary.deduped == 0
    assert out_rows(out)["d1"]["inputs"] == ["rates", "sales"]


@pytest.mark.parametrize("settings", ["kafka"], indirect=True)
async def test_a_partition_moved_to_another_worker_mid_barrier_fires_once(
    settings: Settings, tmp_path: Path
) -> None:
    ns = settings.namespace
    days = [f"day-{i:02d}" for i in range(24)]

    def live_pipeline() -> Pipeline:
        p = Pipeline("barrier")
        p.source(IdleSource(), asset=sales, name="sales-src")
        p.source(IdleSource(), asset=rates, name="rates-src")
        p.stage(inputs=[sales, rates], output=reports, name="report", trigger=AllOf())(report)
        p.sink(MemorySink(), asset=reports)
        return p

    async def publish(asset: Asset[BaseModel], rows: list[dict[str, object]]) -> None:
        t = make_transport(settings)
        await t.start()
        try:
            msgs = []
            for r in rows:
                model = asset.contract.model_validate(r)
                arr = Arrival(stable_id(asset.name, str(r)), asset.name,
                              asset.partition_of(model), 1, 0, "test", "live",
                              str(asset.key_of(model)).encode(),
                              model.model_dump_json().encode())
                msgs.append(arr.message(f"{ns}.{asset.name}"))
            await t.publish(msgs)
        finally:
            await t.close()

    async def wait_for(check, what: str, timeout: float = 60) -> None:  # type: ignore[no-untyped-def]
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while loop.time() < deadline:
            if await check():
                return
            await asyncio.sleep(0.3)
        raise AssertionError(f"timed out waiting for {what}")

    t = make_transport(settings)  # the topics exist before anyone publishes to them
    await t.start()
    await t.ensure_topics([f"{ns}.sales", f"{ns}.rates", f"{ns}.reports"],
                          compacted=[f"{ns}.state.report"])
    await t.close()
    a = Worker(live_pipeline(), settings)
    task_a = asyncio.create_task(a.run())
    try:
        await publish(sales, [sale(i, d) for i, d in enumerate(days)])
        state = f"{ns}.state.report"

        async def all_open() -> bool:
            return len({m.key for m in await read_topic(settings, state, timeout=5)}) == 24

        await wait_for(all_open, "worker A to open 24 barriers")
        b = Worker(live_pipeline(), settings.model_copy(
            update={"state_dir": tmp_path / "state-b"}))
        task_b = asyncio.create_task(b.run())
        await asyncio.sleep(8)  # B joins the group: the partitions are split between A and B
        await publish(rates, [rate(d) for d in days])

        async def all_fired() -> bool:
            return len(await list_runs(settings)) >= 24

        await wait_for(all_fired, "24 runs")
        await asyncio.sleep(1)
        a.request_stop()
        b.request_stop()
        sa, sb = await asyncio.gather(task_a, task_b)
    finally:
        for t in (task_a,):
            if not t.done():
                t.cancel()
    runs = await list_runs(settings)
    assert sorted(r.partition for r in runs) == days
    assert sa.runs + sb.runs == 24
    assert sa.runs > 0 and sb.runs > 0, "both workers fired: partitions really moved"
    out = values(await read_topic(settings, f"{ns}.reports"))
    assert sorted(str(r["day"]) for r in out) == days, "each day reported exactly once"


@pytest.mark.parametrize("settings", ["kafka"], indirect=True)
async def test_inputs_that_are_not_copartitioned_fail_at_start(settings: Settings,
                                                               out: Out) -> None:
    from streamflow import PipelineError
    from streamflow.transports import KafkaTransport

    assert settings.kafka_bootstrap is not None
    other = KafkaTransport(settings.kafka_bootstrap, partitions=3)
    await other.start()
    await other.ensure_topics([f"{settings.namespace}.rates"])
    await other.close()
    with pytest.raises(PipelineError, match=r"same partition count.*rates: 3"):
        await run_pipeline(barrier_pipeline([], [], out, AllOf()), settings)


class Tick(BaseModel):
    tick: datetime
    name: str

    @computed_field  # type: ignore[prop-decorator]
    @property
    def day(self) -> str:
        return self.tick.date().isoformat()


async def test_a_schedule_and_data_mix_in_one_barrier(settings: Settings, out: Out) -> None:
    """'At each tick, once sales and FX for that day are in': ticks are just another input."""
    ticks = Asset("ticks", Tick, key="name", partition_by="day")
    today = datetime.now(UTC).date().isoformat()
    p = Pipeline("scheduled")
    p.source("interval", asset=ticks, every_s=0.05, count=3, name="daily")
    p.source(memory_source([[sale(1, today)]]), asset=sales, name="sales-src")
    p.source(memory_source([[rate(today)]]), asset=rates, name="rates-src")

    @p.stage(inputs=[ticks, sales, rates], output=reports, name="report", trigger=AllOf())
    def scheduled_report(inputs: Inputs) -> Report:
        return report(inputs)

    p.sink(MemorySink(out), asset=reports)
    summary = await run_pipeline(p, settings)

    assert summary.runs == 1, "three ticks on one day fire the day's barrier once"
    assert out_rows(out)[today]["inputs"] == ["rates", "sales", "ticks"]
