"""Event-time tumbling windows on both transports: close on the watermark, late records."""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime
from typing import Any

import pytest
from pydantic import BaseModel

from streamflow import Asset, Pipeline, Settings, Window, WindowRecords, run_pipeline
from streamflow.connectors.testing import MemorySink
from streamflow.ops import list_dead_letters, list_runs

from .helpers import memory_source


class Click(BaseModel):
    id: int
    page: str
    at: datetime


class PageCount(BaseModel):
    key: str
    page: str
    start: datetime
    clicks: int


clicks = Asset("clicks", Click, key="id", partition_by="page", event_time="at")
counts = Asset("counts", PageCount, key="key", partition_by="page")


def count(w: WindowRecords) -> PageCount:
    start = datetime.fromtimestamp(w.start_ms / 1000, UTC)
    return PageCount(key=f"{w.partition}@{start.isoformat()}", page=w.partition, start=start,
                     clicks=len(w["clicks"]))


def at(minute: int, second: int = 0) -> str:
    return datetime(2026, 11, 1, 10, minute, second, tzinfo=UTC).isoformat()


Out = dict[str, dict[str, Any]]


@pytest.fixture
def out() -> Out:
    """What the memory sink stored, shared by the runs (restarts) of one test."""
    return {}


def pipeline(batches: list[list[dict[str, object]]], out: Out) -> Pipeline:
    p = Pipeline("windows")
    p.source(memory_source(batches), asset=clicks)
    p.stage(inputs=[clicks], output=counts, name="per_minute",
            trigger=Window(size_s=60, allowed_lateness_s=10))(count)
    p.sink(MemorySink(out), asset=counts)
    return p


def rows(out: Out) -> dict[str, int]:
    return {str(r["key"]): int(r["clicks"]) for r in out.values()}


async def test_windows_close_on_the_watermark_and_late_records_are_dead_lettered(
    settings: Settings, out: Out
) -> None:
    home = "home"
    batches = [
        [{"id": 1, "page": home, "at": at(0, 5)}, {"id": 2, "page": home, "at": at(0, 50)},
         {"id": 1, "page": home, "at": at(0, 5)}],             # a duplicate
        [{"id": 3, "page": home, "at": at(1, 2)}],             # window 10:01 opens
        [{"id": 4, "page": home, "at": at(0, 55)}],            # late but within lateness
        [{"id": 5, "page": home, "at": at(1, 11)}],            # watermark 10:01:11 closes 10:00
        [{"id": 6, "page": home, "at": at(0, 58)}],            # too late: dead letter
        [{"id": 7, "page": home, "at": at(3, 0)}],             # closes 10:01
    ]
    summary = await run_pipeline(pipeline(batches, out), settings)

    assert rows(out) == {f"home@{at(0)}": 3, f"home@{at(1)}": 2}
    assert summary.runs == 2
    (late,) = await list_dead_letters(settings)
    assert str(late.body["reason"]).startswith("late: event time 2026-11-01T10:00:58")
    assert late.body["kind"] == "stage"
    runs = await list_runs(settings)
    assert sorted(len(r.inputs) for r in runs) == [2, 3]

    # A restart keeps the watermark: the open 10:03 window and the closed ones survive.
    again = await run_pipeline(pipeline([[{"id": 8, "page": home, "at": at(0, 1)}],
                                         [{"id": 9, "page": home, "at": at(5, 0)}]],
                                        out), settings)
    assert again.dead_lettered == 1  # 10:00:01 is late for good
    assert rows(out)[f"home@{at(3)}"] == 1


@pytest.mark.parametrize("policy", ["fire", "skip", "fail"])
async def test_a_window_whose_watermark_never_comes_meets_its_deadline(
    settings: Settings, out: Out, policy: str, caplog: pytest.LogCaptureFixture
) -> None:
    def quiet(batches: list[list[dict[str, object]]]) -> Pipeline:
        p = Pipeline("windows")
        p.source(memory_source(batches), asset=clicks)
        window = Window(size_s=60, deadline_s=0.5, on_deadline=policy)  # type: ignore[arg-type]
        p.stage(inputs=[clicks], output=counts, name="per_minute", trigger=window)(count)
        p.sink(MemorySink(out), asset=counts)
        return p

    with caplog.at_level(logging.WARNING, logger="streamflow.alerts"):
        await run_pipeline(quiet([[{"id": 1, "page": "home", "at": at(0, 5)},
                                   {"id": 2, "page": "home", "at": at(0, 9)}]]), settings)
        await asyncio.sleep(0.6)
        await run_pipeline(quiet([]), settings)

    (run,) = await list_runs(settings)
    if policy == "fire":
        assert run.status == "succeeded" and rows(out) == {f"home@{at(0)}": 2}
    elif policy == "skip":
        assert run.status == "skipped" and not rows(out)
        assert "missed its deadline: the watermark never closed it" in caplog.text
    else:
        assert run.status == "dead-lettered"
        (dead,) = await list_dead_letters(settings)
        assert "window [2026-11-01T10:00:00+00:00" in str(dead.body["reason"])
