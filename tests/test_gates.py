"""Quality gates on both transports: hold only the failing partition, alert once, release."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import orjson
import pytest
from pydantic import BaseModel

from streamflow import (
    AllOf,
    Asset,
    Inputs,
    Pipeline,
    Settings,
    Window,
    WindowRecords,
    Worker,
    run_pipeline,
)
from streamflow.connectors.testing import MemorySink
from streamflow.gates import (
    Alert,
    AllowedValues,
    Check,
    Expect,
    ExpectBatch,
    Freshness,
    NotNull,
    Pattern,
    Range,
    RowCount,
    Unique,
)
from streamflow.model import RunRecord
from streamflow.ops import DeadLetterEntry, list_dead_letters, list_runs, retry_run

from .helpers import memory_source, read_topic


class Order(BaseModel):
    id: int
    day: str
    amount: float | None
    sku: str
    at: datetime = datetime(2026, 11, 1, 10, tzinfo=UTC)


class DayTotal(BaseModel):
    day: str
    orders: list[int]


orders = Asset("orders", Order, key="id", partition_by="day", event_time="at")
clean = Asset("clean", Order, key="id", partition_by="day", event_time="at")
totals = Asset("totals", DayTotal, key="day", partition_by="day")


class Collect:
    """An alert sink that keeps what it got."""

    name = "collect"

    def __init__(self) -> None:
        self.got: list[Alert] = []

    async def send(self, alert: Alert) -> None:
        self.got.append(alert)

    async def close(self) -> None:
        return None


def order(i: int, day: str, amount: float | None = 10.0, sku: str = "SKU-1",
          **extra: object) -> dict[str, object]:
    return {"id": i, "day": day, "amount": amount, "sku": sku, **extra}


Out = dict[str, dict[str, Any]]
"""What a test's memory sink stored, shared by its runs (restarts)."""


def record_gate(batches: list[list[dict[str, object]]], out: Out, alerts: Collect,
                checks: Sequence[Check]) -> Pipeline:
    p = Pipeline("gates", alerts=[alerts])
    p.source(memory_source(batches), asset=orders, name="orders-src")
    p.stage(inputs=[orders], output=clean, name="clean", checks=checks)(lambda o: o)
    p.sink(MemorySink(out), asset=clean)
    return p


def window_gate(batches: list[list[dict[str, object]]], out: Out, alerts: Collect,
                checks: Sequence[Check]) -> Pipeline:
    """Orders per day in a window (closed by its deadline), gated as a batch. It keeps every
    arrival (``keep="all"``): a window keyed by record holds an id once, and ``Unique`` would
    have nothing to find."""
    p = Pipeline("wgates", alerts=[alerts])
    p.source(memory_source(batches), asset=orders, name="orders-src")

    def total(w: WindowRecords) -> DayTotal:
        return DayTotal(day=w.partition, orders=sorted(o.id for o in w["orders"]))  # type: ignore[attr-defined]

    p.stage(inputs=[orders], output=totals, name="daily", checks=checks,
            trigger=Window(size_s=86_400, deadline_s=0.5, on_deadline="fire", keep="all"))(total)
    p.sink(MemorySink(out), asset=totals)
    return p


def rows(out: Out) -> dict[str, list[dict[str, Any]]]:
    found: dict[str, list[dict[str, Any]]] = {}
    for r in out.values():
        found.setdefault(str(r["day"]), []).append(r)
    return found


def by_status(runs: list[RunRecord], stage: str) -> dict[str, list[RunRecord]]:
    found: dict[str, list[RunRecord]] = {}
    for r in runs:
        if r.stage == stage:
            found.setdefault(r.status, []).append(r)
    return found


def gate_letters(entries: list[DeadLetterEntry]) -> list[DeadLetterEntry]:
    return [e for e in entries if e.kind == "gate"]


RECORD_CHECKS: list[Check] = [
    NotNull("amount"), Range("amount", min=0, max=1000), Pattern("sku", r"SKU-\d+"),
    AllowedValues("day", {"d1", "d2", "d3"}), Expect(lambda o: o.id != 13, "not unlucky"),
]


async def test_failing_record_holds_only_its_partition_alerts_once_and_a_fix_releases(
    settings: Settings
) -> None:
    out: Out = {}
    alerts = Collect()
    first = [[order(1, "d1"), order(2, "d1", amount=-5), order(3, "d1"),
              order(4, "d2"), order(5, "d2", sku="sku_x"), order(6, "d3")],
             [order(7, "d1"), order(8, "d3")]]

    worker = Worker(record_gate(first, out, alerts, RECORD_CHECKS), settings)
    s = await worker.run()

    # d1 and d2 are held from their first failing record on; d3 flows.
    got = rows(out)
    assert {d: [r["id"] for r in rs] for d, rs in got.items()} == {
        "d1": [1], "d2": [4], "d3": [6, 8]}
    assert s.records_out == 4
    assert worker.metrics.held == {"clean": 2.0}
    prom = worker.metrics.prometheus()
    assert 'streamflow_held_partitions{stage="clean"} 2' in prom
    assert ('streamflow_gate_checks_total{check="range(amount)",outcome="failed",'
            'stage="clean"} 1') in prom
    held = [a for a in alerts.got if a.kind == "gate-held"]
    assert sorted(a.partition for a in held) == ["d1", "d2"]  # once per partition
    d1 = next(a for a in held if a.partition == "d1")
    assert d1.stage == "clean" and d1.checks and "range(amount)" in d1.summary
    runs = by_status(await list_runs(settings), "clean")
    assert sorted(r.partition for r in runs["held"]) == ["d1", "d2"]
    assert sorted(r.partition for r in runs["parked"]) == ["d1", "d1"]  # 3 and 7
    failed = next(r for r in runs["held"] if r.partition == "d1")
    assert failed.checks is not None
    assert {c["check"]: c["passed"] for c in failed.checks}["range(amount)"] is False
    letters = gate_letters(await list_dead_letters(settings))
    assert len(letters) == 2
    neg = next(e for e in letters if e.body["origin"]["partition_key"] == "d1")
    assert "range(amount)" in str(neg.body["reason"]) and "-5" in str(neg.body["reason"])
    (chk,) = [c for c in neg.body["error"]["checks"] if not c["passed"]]
    assert chk["values"] == [-5.0] and chk["level"] == "error"
    assert orjson.loads(str(neg.body["payload"]))["id"] == 2
    assert neg.replayable

    # A corrected version of order 2 (same key) releases d1: the parked orders follow.
    fixed = [[order(2, "d1", amount=5, _rid="2-fixed")]]
    await run_pipeline(record_gate(fixed, out, alerts, RECORD_CHECKS), settings)

    got = rows(out)
    assert sorted(int(str(r["id"])) for r in got["d1"]) == [1, 2, 3, 7]
    assert [r["id"] for r in got["d2"]] == [4]  # still held
    assert [a.partition for a in alerts.got if a.kind == "gate-released"] == ["d1"]
    assert len([a for a in alerts.got if a.kind == "gate-held"]) == 2  # no second alert
    runs = by_status(await list_runs(settings), "clean")
    assert [r.partition for r in runs["held"]] == ["d2"]
    (released,) = runs["released"]
    assert released.partition == "d1"
    # Released in a later run (a restart): what it was held with is still in the ledger.
    assert [i.asset for i in released.inputs] == ["orders"] and released.checks
    assert {c["check"]: c["passed"] for c in released.checks}["range(amount)"] is False
    assert "parked" not in runs


async def test_held_run_is_released_by_runs_retry_after_a_fix(
    settings: Settings
) -> None:
    out: Out = {}
    alerts = Collect()
    known = {"SKU-1"}
    checks = [Expect(lambda o: o.sku in known, "known sku")]
    batches = [[order(1, "d1", sku="SKU-9"), order(2, "d1"), order(3, "d2")]]

    await run_pipeline(record_gate(batches, out, alerts, checks), settings)
    assert {d: len(rs) for d, rs in rows(out).items()} == {"d2": 1}
    (held,) = by_status(await list_runs(settings), "clean")["held"]

    known.add("SKU-9")  # the fix: the product catalogue learnt SKU-9
    await retry_run(settings, held.run_id[:12])
    await run_pipeline(record_gate([], out, alerts, checks), settings)

    assert sorted(int(str(r["id"])) for r in rows(out)["d1"]) == [1, 2]
    assert [a.kind for a in alerts.got] == ["gate-held", "gate-released"]
    runs = by_status(await list_runs(settings), "clean")
    assert "held" not in runs and [r.run_id for r in runs["released"]] == [held.run_id]


async def test_warn_level_checks_annotate_without_holding(
    settings: Settings
) -> None:
    out: Out = {}
    alerts = Collect()
    checks = [Range("amount", max=100, level="warn")]
    await run_pipeline(record_gate([[order(1, "d1", amount=500), order(2, "d1")]], out,
                                   alerts, checks), settings)

    assert sorted(int(str(r["id"])) for r in rows(out)["d1"]) == [1, 2]
    assert alerts.got == [] and not gate_letters(await list_dead_letters(settings))
    runs = by_status(await list_runs(settings), "clean")
    assert len(runs["succeeded"]) == 2
    (warned,) = [r for r in runs["succeeded"]
                 if r.checks and not r.checks[0]["passed"]]
    assert warned.checks is not None and warned.checks[0]["level"] == "warn"
    assert warned.checks[0]["values"] == [500.0]


async def test_batch_gate_row_count_and_unique_hold_their_day_and_a_new_version_releases(
    settings: Settings
) -> None:
    out: Out = {}
    alerts = Collect()
    checks: list[Check] = [Unique("id"), RowCount(max_spike=2.0, min_history=3)]

    def day(d: str, ids: range) -> list[dict[str, object]]:
        return [order(i, d) for i in ids]

    # Three normal days build the history (four orders each).
    history = [day("d1", range(1, 5)) + day("d2", range(5, 9)) + day("d3", range(9, 13))]
    await run_pipeline(window_gate(history, out, alerts, checks), settings)
    assert set(rows(out)) == {"d1", "d2", "d3"}

    # d4 spikes to twelve orders; d5 repeats order 30; d6 is normal.
    second = [[*day("d4", range(100, 112)), *day("d5", range(30, 33)),
               order(30, "d5", _rid="30-again"), *day("d6", range(40, 44))]]
    await run_pipeline(window_gate(second, out, alerts, checks), settings)

    assert set(rows(out)) == {"d1", "d2", "d3", "d6"}
    assert sorted(a.partition for a in alerts.got if a.kind == "gate-held") == ["d4", "d5"]
    runs = by_status(await list_runs(settings), "daily")
    held = {r.partition: r for r in runs["held"]}
    assert set(held) == {"d4", "d5"}
    spike = next(c for c in held["d4"].checks or [] if c["check"].startswith("row_count"))
    assert spike["passed"] is False and spike["values"] == [12]
    letters = gate_letters(await list_dead_letters(settings))
    dupes = [e for e in letters if "unique(id)" in str(e.body["reason"])
             and not e.replayable]
    assert sorted(orjson.loads(str(e.body["payload"]))["id"] for e in dupes) == [30, 30]
    assert all(e.body["run_id"] == held["d5"].run_id for e in dupes)
    assert sum(1 for e in letters if e.replayable) == 2  # one per held run, for `runs retry`

    # A corrected order 30 for d5 replaces both duplicates: the window fires again, passes.
    await run_pipeline(window_gate([[order(30, "d5", _rid="30-fixed")]], out, alerts, checks),
                       settings)
    d5 = rows(out)["d5"]
    assert [r["orders"] for r in d5] == [[30, 31, 32]]
    assert [a.partition for a in alerts.got if a.kind == "gate-released"] == ["d5"]


OLD = "2020-01-01T00:00:00+00:00"


@pytest.mark.parametrize("check, bad", [
    (NotNull("amount"), order(2, "bad", amount=None)),
    (Range("amount", min=0), order(2, "bad", amount=-1)),
    (AllowedValues("sku", {"SKU-1", "SKU-2"}), order(2, "bad", sku="SKU-3")),
    (Pattern("sku", r"SKU-\d"), order(2, "bad", sku="SKU-X")),
    (Unique("sku"), order(2, "bad", sku="SKU-1")),
    (RowCount(max=2), order(2, "bad", sku="SKU-1")),
    (Freshness("at", max_age_s=3600), order(2, "bad", at=OLD)),
    (Expect(lambda o: o.id != 2, "not two"), order(2, "bad")),
    (ExpectBatch(lambda rs: len({r.sku for r in rs}) > 1 or "one sku only", "sku mix"),
     order(2, "bad", sku="SKU-1")),
], ids=lambda v: getattr(v, "name", ""))
async def test_each_check_kind_passes_and_fails(
    settings: Settings, check: Check, bad: dict[str, object]
) -> None:
    """Partition 'good' passes the check; partition 'bad' fails it."""
    out: Out = {}
    alerts = Collect()
    now = datetime.now(UTC).isoformat()
    good = [order(10, "good", sku="SKU-1", at=now), order(11, "good", sku="SKU-2", at=now)]
    first_bad = order(1, "bad", sku="SKU-1", at=OLD if isinstance(check, Freshness) else now)
    extra = [order(3, "bad", sku="SKU-2", at=now)] if isinstance(check, RowCount) else []
    bad = {"at": now, **bad}  # one window per partition

    # (Old records first: after the new ones they would be late for their window.)
    await run_pipeline(window_gate([[first_bad, bad, *extra, *good]], out, alerts, [check]),
                       settings)

    assert set(rows(out)) == {"good"}, check.name
    (alert,) = [a for a in alerts.got if a.kind == "gate-held"]
    assert alert.partition == "bad" and check.name in alert.summary
    (held,) = by_status(await list_runs(settings), "daily")["held"]
    (result,) = held.checks or []
    assert result["check"] == check.name and result["passed"] is False


class SkuWindow(BaseModel):
    sku: str
    start: str
    orders: list[int]


by_sku = Asset("by_sku", Order, key="id", partition_by="sku", event_time="at")
sku_windows = Asset("sku_windows", SkuWindow, key="start", partition_by="sku")


def sku_window_gate(batches: list[list[dict[str, object]]], out: Out,
                    alerts: Collect) -> Pipeline:
    """Daily windows per SKU: one partition key, many windows."""
    p = Pipeline("skugates", alerts=[alerts])
    p.source(memory_source(batches), asset=by_sku, name="orders-src")

    def per_day(w: WindowRecords) -> SkuWindow:
        return SkuWindow(sku=w.partition, start=datetime.fromtimestamp(w.start_ms / 1000, UTC)
                         .date().isoformat(), orders=sorted(o.id for o in w["by_sku"]))  # type: ignore[attr-defined]

    p.stage(inputs=[by_sku], output=sku_windows, name="per_day", checks=[Range("amount", min=0)],
            trigger=Window(size_s=86_400, deadline_s=0.5, on_deadline="fire"))(per_day)
    # A window's key (its start) is unique only within its SKU: store per partition.
    p.sink(MemorySink(out, by_partition=True), asset=sku_windows)
    return p


async def test_later_windows_of_a_held_key_are_parked_and_run_on_release(
    settings: Settings
) -> None:
    out: Out = {}
    alerts = Collect()
    day1, day2 = datetime(2026, 11, 1, 9, tzinfo=UTC), datetime(2026, 11, 2, 9, tzinfo=UTC)
    batch = [order(1, "x", amount=-1, at=day1), order(2, "x", at=day1),
             order(4, "x", sku="SKU-2", at=day1), order(3, "x", at=day2)]

    await run_pipeline(sku_window_gate([batch], out, alerts), settings)

    def windows() -> list[tuple[str, str, list[int]]]:
        return sorted((str(r["sku"]), str(r["start"]), list(r["orders"])) for r in out.values())

    # SKU-1's first day fails; its second day passes but waits behind the hold. SKU-2 flows.
    assert windows() == [("SKU-2", "2026-11-01", [4])]
    runs = by_status(await list_runs(settings), "per_day")
    assert [r.partition for r in runs["held"]] == ["SKU-1"]
    assert [r.partition for r in runs["parked"]] == ["SKU-1"]

    # A new record for the parked (not held) window is late as ever; the fix releases.
    fixed = [[order(1, "x", amount=1, at=day1, _rid="1-fixed"), order(9, "x", at=day2)]]
    await run_pipeline(sku_window_gate(fixed, out, alerts), settings)

    assert windows() == [("SKU-1", "2026-11-01", [1, 2]), ("SKU-1", "2026-11-02", [3]),
                         ("SKU-2", "2026-11-01", [4])]
    assert [a.kind for a in alerts.got] == ["gate-held", "gate-released"]
    (late,) = [e for e in await list_dead_letters(settings) if "late" in str(e.body["reason"])]
    assert orjson.loads(str(late.body["payload"]))["id"] == 9


class Stock(BaseModel):
    day: str
    units: int


class Matched(BaseModel):
    day: str
    orders: int
    units: int


day_orders = Asset("day_orders", Order, key="day", partition_by="day")
stock = Asset("stock", Stock, key="day", partition_by="day")
matched = Asset("matched", Matched, key="day", partition_by="day")


def barrier_gate(order_batches: list[list[dict[str, object]]],
                 stock_batches: list[list[dict[str, object]]], out: Out,
                 alerts: Collect, trigger: AllOf | None = None) -> Pipeline:
    """A day's order total against the warehouse's units; a mismatch holds the day."""
    p = Pipeline("bgates", alerts=[alerts])
    p.source(memory_source(order_batches), asset=day_orders, name="orders-src")
    p.source(memory_source(stock_batches), asset=stock, name="stock-src")

    def agree(records: Sequence[BaseModel]) -> bool | str:
        o = next(r for r in records if isinstance(r, Order))
        s = next((r for r in records if isinstance(r, Stock)), None)
        if s is None:
            return "no stock figure"
        return o.id == s.units or f"{o.id} ordered, {s.units} shipped"

    def match(x: Inputs) -> Matched:
        o, s = x[day_orders], x[stock]
        return Matched(day=x.partition, orders=o.id, units=s.units)  # type: ignore[attr-defined]

    p.stage(inputs=[day_orders, stock], output=matched, name="match", trigger=trigger or AllOf(),
            checks=[ExpectBatch(agree, "units agree")])(match)
    p.sink(MemorySink(out), asset=matched)
    return p


async def test_held_barrier_is_released_by_a_new_version_of_an_input(
    settings: Settings
) -> None:
    out: Out = {}
    alerts = Collect()
    orders_in = [[order(5, "d1", _rid="o-d1"), order(7, "d2", _rid="o-d2")]]
    stock_in = [[{"id": "s-d1", "day": "d1", "units": 5}, {"id": "s-d2", "day": "d2", "units": 9}]]

    await run_pipeline(barrier_gate(orders_in, stock_in, out, alerts), settings)

    assert set(rows(out)) == {"d1"}
    (held,) = by_status(await list_runs(settings), "match")["held"]
    assert held.partition == "d2" and "7 ordered, 9 shipped" in str(held.error)

    # The warehouse corrects its figure for d2 (AllOf ignores new versions, unless held).
    fix = [[{"id": "s-d2-fixed", "day": "d2", "units": 7}]]
    await run_pipeline(barrier_gate([], fix, out, alerts), settings)

    (d2,) = rows(out)["d2"]
    assert (d2["orders"], d2["units"]) == (7, 7)
    assert [a.kind for a in alerts.got] == ["gate-held", "gate-released"]
    runs = by_status(await list_runs(settings), "match")
    assert [r.run_id for r in runs["released"]] == [held.run_id]


async def test_held_window_is_released_by_runs_retry_after_a_fix(
    settings: Settings
) -> None:
    out: Out = {}
    alerts = Collect()
    known = {"SKU-1"}
    checks = [Expect(lambda o: o.sku in known, "known sku")]
    batch = [order(1, "d1"), order(2, "d1", sku="SKU-7"), order(3, "d2")]

    await run_pipeline(window_gate([batch], out, alerts, checks), settings)
    assert set(rows(out)) == {"d2"}
    (held,) = by_status(await list_runs(settings), "daily")["held"]
    (replayable,) = [e for e in gate_letters(await list_dead_letters(settings)) if e.replayable]
    assert replayable.body["arrival"]["sf-partition"] == "d1"  # its own key, not d2's

    known.add("SKU-7")
    await retry_run(settings, held.run_id)
    await run_pipeline(window_gate([], out, alerts, checks), settings)

    assert [r["orders"] for r in rows(out)["d1"]] == [[1, 2]]
    assert [a.kind for a in alerts.got] == ["gate-held", "gate-released"]
    holds = await read_topic(settings, f"{settings.namespace}.holds.daily")
    assert [(m.key, m.value == b"") for m in holds] == [(b"d1", False), (b"d1", True)]
    assert all(m.partition >= 0 for m in holds)


async def test_barrier_fired_at_its_deadline_and_held_refires_when_the_input_comes(
    settings: Settings
) -> None:
    out: Out = {}
    alerts = Collect()
    trigger = AllOf(deadline_s=0.3, on_deadline="fire", required=[day_orders])
    await run_pipeline(barrier_gate([[order(4, "d3", _rid="o-d3")]], [], out, alerts,
                                    trigger), settings)
    assert not rows(out) and [a.kind for a in alerts.got] == ["gate-held"]

    stock_in = [[{"id": "s-d3", "day": "d3", "units": 4}]]
    await run_pipeline(barrier_gate([], stock_in, out, alerts, trigger), settings)

    (d3,) = rows(out)["d3"]
    assert (d3["orders"], d3["units"]) == (4, 4)
    assert [a.kind for a in alerts.got] == ["gate-held", "gate-released"]


async def test_a_run_failing_again_for_the_same_input_replaces_the_held_one(
    settings: Settings
) -> None:
    out: Out = {}
    alerts = Collect()
    runs: list[list[dict[str, object]]] = [
        [order(2, "d1", amount=-5)], [order(2, "d1", amount=-3, _rid="2b")],
        [order(2, "d1", amount=3, _rid="2c")]]
    statuses = []
    for batch in runs:
        await run_pipeline(record_gate([batch], out, alerts, RECORD_CHECKS), settings)
        statuses.append(sorted(r.status for r in await list_runs(settings)))

    assert statuses == [["held"], ["held", "released"], ["released", "released", "succeeded"]]
    assert [a.kind for a in alerts.got] == ["gate-held", "gate-released"]
    assert [r["amount"] for r in rows(out)["d1"]] == [3.0]
