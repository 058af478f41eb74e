"""The pipeline of ``python -m bench backfill-live``: one map stage over an hourly event
stream whose history a backfill replays (2,000 events an hour, synthetic and deterministic).

The stage notes, for each event it runs, when it ran and its id: the benchmark reads ``RAN`` in
the worker's process (and counts every id, so that a lost or twice-run event shows). The
backfill driver loads this module in its own process.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

from pydantic import BaseModel

from streamflow import Asset, Pipeline
from streamflow.connectors import ConnectorContext, SourceBatch, SourceRecord, TimeRange

EPOCH = datetime(2026, 1, 1, tzinfo=UTC)
PER_HOUR = 2000
HOURS = 100  # 200,000 events of history: two disjoint 100,000-event backfills


class Event(BaseModel):
    id: str
    hour: str
    at: datetime
    value: float
    sent_ns: int = 0
    """Live events: when the load generator handed it to the producer."""


class Scored(BaseModel):
    id: str
    hour: str
    score: float


RAN: list[tuple[int, int, bool, str]] = []
"""(sent_ns, ran_ns, live, event id) per run, in the worker's process."""


def history_id(hour: int, i: int) -> str:
    return f"h{hour:03d}-{i:04d}"


def history_ids(first_hour: int, end_hour: int) -> set[str]:
    """The ids of every event of history in hours [first_hour, end_hour)."""
    return {history_id(h, i) for h in range(first_hour, end_hour) for i in range(PER_HOUR)}


class History:
    """Live: nothing (the benchmark produces live events itself). History: any hours."""

    location = "synthetic"

    async def setup(self, ctx: ConnectorContext) -> None:
        return None

    async def read(self) -> AsyncIterator[SourceBatch]:
        await asyncio.Event().wait()
        yield SourceBatch([])

    async def backfill(self, window: TimeRange) -> AsyncIterator[SourceBatch]:
        for h in range(HOURS):
            start = EPOCH + timedelta(hours=h)
            if not window.start <= start < window.end:
                continue
            hour = start.isoformat()
            yield SourceBatch([SourceRecord(
                {"id": history_id(h, i), "hour": hour,
                 "at": (start + timedelta(seconds=i)).isoformat(), "value": float(i)},
                {"hour": h, "i": i}, history_id(h, i)) for i in range(PER_HOUR)])

    async def ack(self, batch: SourceBatch) -> None:
        return None

    async def stop(self) -> None:
        return None


events = Asset("events", Event, key="id", partition_by="hour", event_time="at")
scored = Asset("scored", Scored, key="id", partition_by="hour")

pipeline = Pipeline("backfill-live")
pipeline.source(History(), asset=events, name="history")


@pipeline.stage(inputs=[events], output=scored)
def score(e: Event) -> Scored:
    RAN.append((e.sent_ns, time.time_ns(), e.sent_ns > 0, e.id))
    return Scored(id=e.id, hour=e.hour, score=e.value * 0.5)
