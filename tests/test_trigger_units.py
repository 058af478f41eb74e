"""The barrier and window runtimes driven directly (no transport), for what review found
(issue 17): a deadline off the heap waits for its time even once required inputs are in, a
restored window knows its watermark from its records, a deadline fires a window once."""

from __future__ import annotations

import time
from typing import Any

import orjson
from pydantic import BaseModel

from streamflow import AllOf, Asset, Pipeline, Window
from streamflow.model import H_ASSET, Arrival, Message
from streamflow.triggers import BarrierGate, WindowGate


class Rec(BaseModel):
    id: str
    day: str


a, b, c = (Asset(n, Rec, key="id", partition_by="day") for n in ("a", "b", "c"))
ASSETS = {x.name: x for x in (a, b, c)}


def arrive(asset: Asset[Any], rid: str, offset: int, event_ms: int,
           day: str = "d1") -> tuple[Message, Arrival]:
    value = Rec(id=rid, day=day).model_dump_json().encode()
    arr = Arrival(f"{asset.name}-{rid}", asset.name, day, 1, event_ms, "", "live",
                  rid.encode(), value)
    return Message(asset.name, 0, offset, rid.encode(), value, arr.headers(), 0), arr


def barrier(trigger: AllOf) -> BarrierGate:
    p = Pipeline("u")
    p.stage(inputs=[a, b, c], trigger=trigger)(lambda x: None)  # never run here
    return BarrierGate(p.stages[0], None, "ns", ASSETS)  # type: ignore[arg-type]


def test_a_deadline_waits_for_its_time_even_once_required_inputs_are_in() -> None:
    g = barrier(AllOf(deadline_s=600, on_deadline="fire", required=["a"]))
    for i, asset in enumerate((b, a)):  # the required input second, long before the deadline
        m, arr = arrive(asset, "1", i, 1_000)
        plans, _ = g.offer(m, arr, asset)
        assert plans == []
        assert not g.any_expired() and g.expired() == []
    left = g.next_deadline_s()
    assert left is not None and 590 < left <= 600


def test_past_its_deadline_a_barrier_waits_for_a_required_input_then_fires() -> None:
    g = barrier(AllOf(deadline_s=0.05, on_deadline="fire", required=["a"]))
    m, arr = arrive(b, "1", 0, 1_000)
    g.offer(m, arr, b)
    time.sleep(0.06)
    assert not g.any_expired()  # due, but "a" is required: it waits aside
    m, arr = arrive(a, "1", 1, 1_000)
    g.offer(m, arr, a)
    assert g.any_expired()
    (due,) = g.expired()
    assert sorted(i.asset for i in due[0].inputs) == ["a", "b"]


def window(w: Window) -> WindowGate:
    p = Pipeline("u")
    p.stage(inputs=[a], trigger=w)(lambda x: None)
    return WindowGate(p.stages[0], None, "ns", ASSETS)  # type: ignore[arg-type]


def test_a_restored_window_knows_its_watermark_from_its_records() -> None:
    g = window(Window(size_s=60))
    m, arr = arrive(a, "1", 0, 90_000)   # window [60 s, 120 s)
    _, msgs = g.offer(m, arr, a)
    # Restore those changelog records into a fresh gate, as a restarted worker would.
    fresh = window(Window(size_s=60))
    for out in msgs:
        key = (out.key or b"").decode()
        d = orjson.loads(out.value)
        v = d.pop("v")
        fresh.store.apply(key, d, v, 0)
    fresh.store.settle(0)
    assert fresh.watermark(0) == 90_000


def test_a_deadline_fires_a_window_once_even_if_scheduled_twice() -> None:
    g = window(Window(size_s=60, deadline_s=0.01))
    m, arr = arrive(a, "1", 0, 90_000)
    g.offer(m, arr, a)
    g._settled(0, g.store.book(0))  # restored again (a rewind): its deadline is pushed again
    time.sleep(0.02)
    assert len(g.expired()) == 1
    assert g.expired() == []



def test_a_fired_barrier_retires_after_a_new_version_it_ignored() -> None:
    g = barrier(AllOf(retention_s=60))
    offset = 0
    for asset in (a, b, c):
        offset += 1
        m, arr = arrive(asset, "1", offset, 1_000)
        g.offer(m, arr, asset)
    assert g.states["d1"].fired is not None
    m, arr = arrive(a, "2", 10, 50_000)  # a new version, ignored ("ignore" is the default)
    assert g.offer(m, arr, a)[0] == []
    retired = []
    # Every input's watermark moves a retention past d1's slots, "a" first part of the way.
    for asset, event, day in ((a, 70_000, "d3"), (b, 200_000, "d2"), (c, 200_000, "d2"),
                              (a, 200_000, "d2")):
        offset += 1
        m, arr = arrive(asset, "9", 20 + offset, event, day=day)
        retired += [o for o in g.offer(m, arr, asset)[1] if o.value == b"" and o.key == b"d1"]
    assert "d1" not in g.states and len(retired) == 1


def test_a_window_read_from_v1_keeps_its_records_when_its_header_is_written() -> None:
    g = window(Window(size_s=60, deadline_s=0.01))
    v1 = {"partition": "d1", "kafka_partition": 0, "first_seen_ms": 0, "fired": None,
          "window_start_ms": 60_000, "max_event_ms": 90_000,
          "slots": {"a-1": {"arrival_id": "a-1", "version": 1, "value": '{"id":"1","day":"d1"}',
                            "headers": [[H_ASSET, "a"]], "key": "1"}}}
    g.store.apply("d1@60000", v1, 1, 0)
    g.store.settle(0)
    time.sleep(0.02)
    ((_, _, header),) = g.expired()  # the deadline rewrites the header: still with its record
    assert orjson.loads(header.value)["slots"], "a v1 window's records were dropped"
