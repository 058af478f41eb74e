"""The pipeline of ``python -m bench backfill-live``: one map stage over an hourly event
stream whose history a backfill replays (2,000 events an hour, synthetic and deterministic).

The stage notes, for each event it runs, when it ran: the benchmark reads ``RAN`` in the
worker's process. The backfill driver loads this module in its own process.
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


RAN: list[tuple[int, int, bool]] = []
"""(sent_ns, ran_ns, live) per run, in the worker's process."""


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
                {"id": f"h{h:03d}-{i:04d}", "hour": hour,
                 "at": (start + timedelta(seconds=i)).isoformat(), "value": float(i)},
                {"hour": h, "i": i}, f"h{h:03d}-{i:04d}") for i in range(PER_HOUR)])

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
    RAN.append((e.sent_ns, time.time_ns(), e.sent_ns > 0))
    return Scored(id=e.id, hour=e.hour, score=e.value * 0.5)
