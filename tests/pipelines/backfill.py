"""Backfill tests: a day-partitioned order feed that can also read its history.

``orders`` (partitioned by day) → ``price`` → ``priced``, with a PostgreSQL sink when
``BACKFILL_PG_TABLE`` is set. The live feed yields one day every ``BACKFILL_LIVE_DELAY``
seconds; ``backfill(range)`` yields every day of the range at once: the same records, with
the same record ids, as a backfill of a real source would.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from datetime import UTC, date, datetime, timedelta

from pydantic import BaseModel

from streamflow import Asset, Pipeline
from streamflow.connectors import ConnectorContext, SourceBatch, SourceRecord, TimeRange

FIRST_DAY = date(2026, 10, 1)


class Order(BaseModel):
    order_id: str
    day: date
    ordered_at: datetime
    amount: float


class Priced(BaseModel):
    order_id: str
    day: date
    total: float


def order(day: int, i: int) -> dict[str, object]:
    d = FIRST_DAY + timedelta(days=day)
    at = datetime(d.year, d.month, d.day, tzinfo=UTC) + timedelta(minutes=i)
    return {"order_id": f"o{day:02d}-{i:03d}", "day": d.isoformat(),
            "ordered_at": at.isoformat(), "amount": float(i + 1)}


class OrderFeed:
    """Live: one day per ``delay`` seconds. History: any range, at once."""

    location = "memory"

    def __init__(self, days: int, per_day: int, delay: float) -> None:
        self.days, self.per_day, self.delay = days, per_day, delay

    async def setup(self, ctx: ConnectorContext) -> None:
        return None

    def _batch(self, day: int) -> SourceBatch:
        return SourceBatch([SourceRecord(order(day, i), {"day": day, "line": i},
                                         f"o{day:02d}-{i:03d}") for i in range(self.per_day)],
                           position=str(day))

    async def read(self) -> AsyncIterator[SourceBatch]:
        for day in range(self.days):
            yield self._batch(day)
            await asyncio.sleep(self.delay)

    async def backfill(self, window: TimeRange) -> AsyncIterator[SourceBatch]:
        for day in range(self.days):
            start = datetime.combine(FIRST_DAY + timedelta(days=day), datetime.min.time(), UTC)
            if start < window.end and start + timedelta(days=1) > window.start:
                yield self._batch(day)

    async def ack(self, batch: SourceBatch) -> None:
        return None

    async def stop(self) -> None:
        return None


orders = Asset("orders", Order, key="order_id", partition_by="day", event_time="ordered_at")
priced = Asset("priced", Priced, key="order_id", partition_by="day")


def make_pipeline(days: int, per_day: int, delay: float, pg_table: str | None = None,
                  dsn: str | None = None) -> Pipeline:
    p = Pipeline("backfill")
    p.source(OrderFeed(days, per_day, delay), asset=orders)

    @p.stage(inputs=[orders], output=priced)
    def price(o: Order) -> Priced:
        return Priced(order_id=o.order_id, day=o.day, total=round(o.amount * 1.2, 2))

    if pg_table:
        p.sink("postgres", asset=priced, dsn=dsn, table=pg_table)
    return p


pipeline = make_pipeline(int(os.environ.get("BACKFILL_DAYS", "12")),
                         int(os.environ.get("BACKFILL_PER_DAY", "30")),
                         float(os.environ.get("BACKFILL_LIVE_DELAY", "0.5")),
                         os.environ.get("BACKFILL_PG_TABLE"), os.environ.get("BACKFILL_PG_DSN"))
