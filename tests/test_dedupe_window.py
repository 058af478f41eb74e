"""The bounded window of fired run ids (issue 17): a duplicate within it skips its run, one
older than it runs again, and memory never holds more than two generations."""

from __future__ import annotations

import pytest
from pydantic import BaseModel

from streamflow import Asset, Pipeline, Settings, run_pipeline
from streamflow.connectors.testing import MemorySink
from streamflow.engine._fired import RecentRuns

from .helpers import memory_source

pytestmark = pytest.mark.timeout(120)


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_ids_are_remembered_for_the_window_or_max_ids_and_then_forgotten() -> None:
    clock = Clock()
    runs = RecentRuns(window_s=10, max_ids=3, clock=clock)
    runs.update(["a", "b"])
    runs.tick()
    assert "a" in runs and len(runs) == 2
    runs.add("c")
    runs.tick()  # full: a new generation starts, the old one is still looked up
    runs.add("d")
    assert all(r in runs for r in "abcd")
    clock.now = 10
    runs.tick()  # the window passed: a, b and c are gone, d moves to the previous generation
    assert [r for r in "abcd" if r in runs] == ["d"]
    runs.discard("d")  # its transaction was lost
    assert "d" not in runs and len(runs) == 0


class Ping(BaseModel):
    id: int


pings = Asset("pings", Ping, key="id")
pongs = Asset("pongs", Ping, key="id")


def echo(p: Ping) -> Ping:
    return p


def pipeline(out: dict[str, dict[str, object]]) -> Pipeline:
    p = Pipeline("dedupe")
    p.source(memory_source([[{"id": 1}, {"id": 2}]]), asset=pings)
    p.stage(inputs=[pings], output=pongs, name="echo")(echo)
    p.sink(MemorySink(out), asset=pongs)
    return p


async def test_a_duplicate_within_the_window_is_skipped_and_one_older_runs_again(
    settings: Settings
) -> None:
    out: dict[str, dict[str, object]] = {}
    first = await run_pipeline(pipeline(out), settings)
    again = await run_pipeline(pipeline(out), settings)  # the same records, the same ids
    assert (first.runs, again.runs, again.deduped) == (2, 0, 2)

    # A window shorter than the time since those runs: they are not remembered at start.
    short = settings.model_copy(update={"dedupe_window_s": 0.001})
    late = await run_pipeline(pipeline(out), short)
    assert (late.runs, late.deduped) == (2, 0)
    assert sorted(out) == ["1", "2"]  # the keyed sink holds each once
