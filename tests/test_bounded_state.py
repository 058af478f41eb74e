"""Bounded trigger state on both transports (issue 17): windows keyed by record, appended to
their changelog, capped and forgotten once closed; barriers that ignore a duplicate under a
new arrival id and forget fired partitions past their retention."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, Literal

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
    run_pipeline,
)
from streamflow.connectors.testing import MemorySink
from streamflow.model import state_topic
from streamflow.ops import list_dead_letters, list_runs

from .helpers import memory_source, read_topic

pytestmark = pytest.mark.timeout(180)


class Sale(BaseModel):
    id: int
    shop: str
    amount: int
    at: datetime


class Pay(BaseModel):
    id: int
    shop: str
    at: datetime


class Total(BaseModel):
    key: str
    sales: int
    amount: int


sales = Asset("sales", Sale, key="id", partition_by="shop", event_time="at")
pays = Asset("pays", Pay, key="id", partition_by="shop", event_time="at")
totals = Asset("totals", Total, key="key", partition_by="key")
Out = dict[str, dict[str, Any]]


def at(minute: int, second: int = 0) -> str:
    return datetime(2026, 11, 1, 10, minute, second, tzinfo=UTC).isoformat()


def sale(i: int, minute: int, amount: int = 1, rid: str | None = None,
         second: int = 0) -> dict[str, object]:
    d: dict[str, object] = {"id": i, "shop": "s1", "amount": amount, "at": at(minute, second)}
    if rid is not None:
        d["_rid"] = rid  # the same record under another arrival id (another file, say)
    return d


def per_minute(w: WindowRecords) -> Total:
    rows = w["sales"]
    return Total(key=f"{w.partition}@{w.start_ms}", sales=len(rows),
                 amount=sum(r.amount for r in rows))  # type: ignore[attr-defined]


def window_pipeline(batches: list[list[dict[str, object]]], out: Out,
                    window: Window) -> Pipeline:
    p = Pipeline("bounded")
    p.source(memory_source(batches), asset=sales)
    p.stage(inputs=[sales], output=totals, name="per_minute", trigger=window)(per_minute)
    p.sink(MemorySink(out), asset=totals)
    return p


def one_partition(settings: Settings) -> Settings:
    """A watermark is per input partition: one partition keeps these tests' clocks shared."""
    return settings.model_copy(update={"partitions": 1})


async def live_state(settings: Settings, stage: str) -> dict[str, bytes]:
    """The changelog as compaction leaves it: the latest value per key, tombstones gone."""
    latest: dict[str, bytes] = {}
    for m in await read_topic(settings, state_topic(settings.namespace, stage)):
        latest[(m.key or b"").decode()] = m.value
    return {k: v for k, v in latest.items() if v}


@pytest.mark.parametrize("keep", ["last", "all"])
async def test_a_window_keeps_one_record_per_key_unless_asked_for_every_arrival(
    settings: Settings, keep: Literal["last", "all"]
) -> None:
    settings = one_partition(settings)
    out: Out = {}
    batches = [
        [sale(1, 0, amount=5)],
        [sale(1, 0, amount=5, rid="resent")],        # the same sale in another file
        [sale(2, 0, amount=7)],
        [sale(2, 0, amount=9, rid="corrected", second=30)],  # a new version of sale 2
        [sale(3, 2)],                                 # the watermark closes 10:00
    ]
    summary = await run_pipeline(
        window_pipeline(batches, out, Window(size_s=60, keep=keep)), settings)

    ten = int(datetime(2026, 11, 1, 10, tzinfo=UTC).timestamp() * 1000)
    (total,) = [r for r in out.values() if r["key"] == f"s1@{ten}"]
    if keep == "last":
        assert (total["sales"], total["amount"]) == (2, 14)  # sale 1 once, sale 2's new version
    else:
        assert (total["sales"], total["amount"]) == (4, 26)  # every arrival
    assert summary.dead_lettered == 0
    (run,) = await list_runs(settings)
    assert len(run.inputs) == (2 if keep == "last" else 4)


async def test_a_closed_window_is_forgotten_its_records_appended_and_late_stays_late(
    settings: Settings
) -> None:
    settings = one_partition(settings)
    out: Out = {}
    window = Window(size_s=60, allowed_lateness_s=10)
    first = [[sale(i, 0, second=i) for i in range(1, 41)], [sale(41, 1, second=20)],
             [sale(42, 2, second=30)]]  # 10:02:30 closes 10:00 and 10:01
    await run_pipeline(window_pipeline(first, out, window), settings)

    assert sorted((r["sales"], r["amount"]) for r in out.values()) == [(1, 1), (40, 40)]
    msgs = await read_topic(settings, state_topic(settings.namespace, "per_minute"))
    # Each record is appended on its own: no message holds the window's forty records.
    assert max(len(m.value) for m in msgs) < 4_000, "a window rewritten whole"
    live = await live_state(settings, "per_minute")
    # Only the open 10:02 window (its header and one record) and the mark remain.
    assert len(live) == 3, sorted(live)
    assert sum(1 for k in live if k.startswith("\x1fmark@")) == 1

    # A restart knows the watermark from the mark alone: 10:00 is late for good; the open
    # window still counts its record once.
    again = [[sale(43, 0, second=59)], [sale(42, 2, second=30, rid="resent")],
             [sale(44, 5)]]
    summary = await run_pipeline(window_pipeline(again, out, window), settings)
    assert summary.dead_lettered == 1
    (late,) = await list_dead_letters(settings)
    assert str(late.body["reason"]).startswith("late: event time 2026-11-01T10:00:59")
    assert sorted((r["sales"], r["amount"]) for r in out.values()) == [(1, 1), (1, 1), (40, 40)]


async def test_a_full_window_dead_letters_what_does_not_fit(settings: Settings) -> None:
    settings = one_partition(settings)
    out: Out = {}
    batches = [[sale(1, 0), sale(2, 0), sale(3, 0)], [sale(4, 1, second=1)]]
    summary = await run_pipeline(
        window_pipeline(batches, out, Window(size_s=60, max_records=2)), settings)

    assert summary.dead_lettered == 1
    (full,) = await list_dead_letters(settings)
    assert "holds 2 records, its cap (Window.max_records=2)" in str(full.body["reason"])
    assert [r["sales"] for r in out.values()] == [2]


def shop_total(inputs: Inputs) -> Total:
    s = inputs["sales"]
    assert isinstance(s, Sale)
    return Total(key=f"{inputs.partition}", sales=1, amount=s.amount)


def barrier_pipeline(batches: list[list[dict[str, object]]], out: Out,
                     trigger: AllOf) -> Pipeline:
    p = Pipeline("bounded")
    p.source(memory_source([[r for r in b if "amount" in r] for b in batches]), asset=sales,
             name="sales-src")
    p.source(memory_source([[r for r in b if "amount" not in r] for b in batches]), asset=pays,
             name="pays-src")
    p.stage(inputs=[sales, pays], output=totals, name="paid", trigger=trigger)(shop_total)
    p.sink(MemorySink(out), asset=totals)
    return p


def pay(shop: str, minute: int, rid: str | None = None) -> dict[str, object]:
    d: dict[str, object] = {"id": 1000 * ord(shop) + minute, "shop": shop, "at": at(minute)}
    if rid is not None:
        d["_rid"] = rid
    return d


def sale_of(shop: str, minute: int, amount: int = 1,
            rid: str | None = None) -> dict[str, object]:
    return {**sale(1000 * ord(shop) + minute, minute, amount, rid), "shop": shop}


async def test_a_barrier_ignores_the_same_content_under_a_new_arrival_id(
    settings: Settings
) -> None:
    settings = one_partition(settings)
    out: Out = {}
    trigger = AllOf(on_new_version="refire")
    runs = []
    # One run each: the two inputs' topics are read in no set order.
    for batch in ([sale_of("a", 0), pay("a", 0)],
                  [sale_of("a", 0, rid="resent")],         # the same sale again: no refire
                  [sale_of("a", 0, amount=3, rid="v2")]):  # a new version: refires
        runs.append((await run_pipeline(barrier_pipeline([batch], out, trigger), settings)).runs)
    assert runs == [1, 0, 1]
    assert out["a"]["amount"] == 3


async def test_a_barrier_forgets_fired_partitions_past_their_retention(
    settings: Settings
) -> None:
    settings = one_partition(settings)
    out: Out = {}
    trigger = AllOf(retention_s=60)
    batches = [[sale_of("a", 0), pay("a", 0)],
               [sale_of("b", 5), pay("b", 5)]]   # both inputs' watermarks leave "a" behind
    await run_pipeline(barrier_pipeline(batches, out, trigger), settings)
    assert sorted(out) == ["a", "b"]
    live = await live_state(settings, "paid")
    assert "a" not in live and "b" in live, sorted(live)

    # A restart: "a" is gone, and an arrival as old as its inputs is late rather than a new
    # barrier that would wait for ever; one within retention opens a barrier as usual.
    later = [[sale_of("a", 0, amount=2, rid="v2")], [sale_of("c", 6), pay("c", 6)]]
    summary = await run_pipeline(barrier_pipeline(later, out, trigger), settings)
    assert summary.dead_lettered == 1
    (late,) = await list_dead_letters(settings)
    reason = str(late.body["reason"])
    assert reason.startswith("late: event time 2026-11-01T10:00:00") and "retention" in reason
    assert sorted(out) == ["a", "b", "c"] and out["a"]["amount"] == 1
