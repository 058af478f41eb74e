"""Retail: stores, a web shop and a loyalty scheme, reconciled into one report a day.

- Point-of-sale sales land as one CSV file per day (``landing/pos``); online orders arrive
  continuously (``landing/orders``, JSON Lines); loyalty snapshots come every few hours
  (``landing/loyalty``); the warehouse reports units shipped (``landing/inventory``).
- Both channels are standardised to USD and enriched with product metadata.
- ``pos_daily`` gathers a day's till sales behind a quality gate: a malformed day is held
  (its report waits) and alerted, the bad lines are quarantined, a corrected file releases it.
- ``daily_report`` fires once a day's POS total, its closed online-orders window and its
  loyalty snapshot are all in; a day whose snapshot never comes is reported at the deadline,
  marked incomplete. ``reconcile_inventory`` alerts when the warehouse's figures diverge.

Run it with ``streamflow run examples/retail/pipeline.py:pipeline``. ``RETAIL_WORKDIR`` says
where the landing and output folders are (default ``.streamflow/retail``);
``python examples/retail/demo.py`` seeds a fresh one and tells the story. ``RETAIL_WATCH=1``
keeps the sources watching for new files, for ``streamflow worker``;
``python examples/retail/backfill.py`` backfills last month's till sales beside live orders.
"""

from __future__ import annotations

import csv
import os
from datetime import date, datetime
from decimal import Decimal
from pathlib import Path

from pydantic import BaseModel, Field, computed_field

from streamflow import AllOf, Asset, Inputs, Pipeline, Window, WindowRecords
from streamflow.gates import ExpectBatch, NotNull, Pattern, Range, RowCount, Unique

HERE = Path(__file__).resolve().parent
WORKDIR = Path(os.environ.get("RETAIL_WORKDIR", ".streamflow/retail")).resolve()


class PosSale(BaseModel):
    """One till receipt line as the stores export it."""

    sale_id: str = Field(min_length=1)
    store: str
    sold_at: datetime
    sku: str
    quantity: int = Field(gt=0)
    amount: Decimal
    currency: str = Field(pattern=r"^[A-Z]{3}$")


class OnlineOrder(BaseModel):
    order_id: str
    customer: str
    ordered_at: datetime
    sku: str
    quantity: int = Field(gt=0)
    amount: Decimal
    currency: str = Field(pattern=r"^[A-Z]{3}$")


class LoyaltySnapshot(BaseModel):
    snapshot_at: datetime
    members: int
    points_issued: int

    @computed_field  # type: ignore[prop-decorator]
    @property
    def day(self) -> date:
        return self.snapshot_at.date()


class Inventory(BaseModel):
    """Units the warehouse says left its shelves that day."""

    day: date
    units_out: int


class Sale(BaseModel):
    """A sale from either channel, in USD, with its product."""

    sale_id: str
    channel: str
    store: str
    sold_at: datetime
    day: date
    sku: str
    product: str | None
    category: str | None
    quantity: int
    amount: Decimal
    currency: str
    amount_usd: Decimal


class ChannelDay(BaseModel):
    day: date
    channel: str
    sales: int
    units: int
    stores: list[str]
    total_usd: Decimal


class DailySales(BaseModel):
    """One day's report across both channels, with the loyalty figures when they came."""

    day: date
    pos_sales: int
    pos_usd: Decimal
    online_orders: int
    online_usd: Decimal
    total_usd: Decimal
    stores: list[str]
    loyalty_members: int | None
    loyalty_points: int | None
    complete: bool
    missing: list[str]


class Reconciliation(BaseModel):
    day: date
    units_sold: int
    units_out: int


def _read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as fh:
        return list(csv.DictReader(fh))


FX = {r["currency"]: Decimal(r["usd_per_unit"]) for r in _read_csv(HERE / "data" / "fx.csv")}
PRODUCTS = {r["sku"]: r for r in _read_csv(HERE / "data" / "products.csv")}

by_day = {"partition_by": "day"}
pos_sales = Asset("pos_sales", PosSale, key="sale_id", event_time="sold_at")
online_orders = Asset("online_orders", OnlineOrder, key="order_id", event_time="ordered_at")
loyalty = Asset("loyalty", LoyaltySnapshot, key="day", event_time="snapshot_at", **by_day)
inventory = Asset("inventory", Inventory, key="day", **by_day)
pos_usd = Asset("pos_usd", Sale, key="sale_id", event_time="sold_at", **by_day)
online_usd = Asset("online_usd", Sale, key="sale_id", event_time="sold_at", **by_day)
pos_day = Asset("pos_day", ChannelDay, key="day", **by_day)
online_day = Asset("online_day", ChannelDay, key="day", **by_day)
loyalty_day = Asset("loyalty_day", LoyaltySnapshot, key="day", **by_day)
daily_sales = Asset("daily_sales", DailySales, key="day", **by_day)
reconciliation = Asset("reconciliation", Reconciliation, key="day", **by_day)

pipeline = Pipeline("retail")
landing = WORKDIR / "landing"
# RETAIL_WATCH=1: the sources keep watching their folders (a long-running `streamflow worker`);
# unset, they read what has landed and end (`streamflow run`).
watch = os.environ.get("RETAIL_WATCH") == "1"
pipeline.source("files", asset=pos_sales, path=landing / "pos", format="csv", watch=watch)
pipeline.source("files", asset=online_orders, path=landing / "orders", format="jsonl",
                watch=watch)
pipeline.source("files", asset=loyalty, path=landing / "loyalty", format="jsonl", watch=watch)
pipeline.source("files", asset=inventory, path=landing / "inventory", format="csv",
                watch=watch)


def standardise(sale_id: str, channel: str, store: str, sold_at: datetime, sku: str,
                quantity: int, amount: Decimal, currency: str) -> Sale:
    if currency not in FX:
        raise ValueError(f"no FX rate for {currency}; add it to data/fx.csv")
    product = PRODUCTS.get(sku, {})
    return Sale(sale_id=sale_id, channel=channel, store=store, sold_at=sold_at,
                day=sold_at.date(), sku=sku, product=product.get("name"),
                category=product.get("category"), quantity=quantity, amount=amount,
                currency=currency, amount_usd=(amount * FX[currency]).quantize(Decimal("0.01")))


@pipeline.stage(inputs=[pos_sales], output=pos_usd)
def to_usd(s: PosSale) -> Sale:
    return standardise(s.sale_id, "pos", s.store, s.sold_at, s.sku, s.quantity, s.amount,
                       s.currency)


@pipeline.stage(inputs=[online_orders], output=online_usd)
def online_to_usd(o: OnlineOrder) -> Sale:
    return standardise(o.order_id, "online", "web", o.ordered_at, o.sku, o.quantity, o.amount,
                       o.currency)


pipeline.sink("files", asset=pos_usd, path=WORKDIR / "out")
pipeline.sink("files", asset=online_usd, path=WORKDIR / "out")


def channel_day(window: WindowRecords, channel: str) -> ChannelDay:
    sales = [s for s in window.all() if isinstance(s, Sale)]
    return ChannelDay(day=date.fromisoformat(window.partition), channel=channel,
                      sales=len(sales), units=sum(s.quantity for s in sales),
                      stores=sorted({s.store for s in sales}),
                      total_usd=sum((s.amount_usd for s in sales), Decimal("0")))


# The gate: a store's file is a day's batch. Any bad line holds that day (its report waits),
# goes to dead letters with the check and the value, and raises one alert; a corrected line
# (same sale_id) releases the day. The deadline closes the day a few seconds after its file.
@pipeline.stage(
    inputs=[pos_usd], output=pos_day,
    trigger=Window(size_s=86_400, allowed_lateness_s=3_600, deadline_s=3, on_deadline="fire"),
    checks=[NotNull("product"), Pattern("sku", r"SKU-\d{3}"), Range("amount_usd", min=0),
            Unique("sale_id"), RowCount(max_spike=3.0, max_drop=0.25, min_history=2)])
def pos_daily(window: WindowRecords) -> ChannelDay:
    return channel_day(window, "pos")


@pipeline.stage(inputs=[online_usd], output=online_day, trigger=Window(
    size_s=86_400, allowed_lateness_s=3_600, deadline_s=3, on_deadline="fire"))
def online_daily(window: WindowRecords) -> ChannelDay:
    return channel_day(window, "online")


@pipeline.stage(inputs=[loyalty], output=loyalty_day, trigger=Window(
    size_s=86_400, deadline_s=3, on_deadline="fire"))
def latest_snapshot(window: WindowRecords) -> LoyaltySnapshot:
    return max((s for s in window.all() if isinstance(s, LoyaltySnapshot)),
               key=lambda s: s.snapshot_at)


# Both channels are required: a held POS day makes the report wait past the deadline. The
# loyalty snapshot is not: at the deadline the report goes out without it, marked incomplete.
@pipeline.stage(inputs=[pos_day, online_day, loyalty_day], output=daily_sales, trigger=AllOf(
    deadline_s=4, on_deadline="fire", required=[pos_day, online_day]))
def daily_report(x: Inputs) -> DailySales:
    pos, online = x[pos_day], x[online_day]
    assert isinstance(pos, ChannelDay) and isinstance(online, ChannelDay)
    snap = x.get(loyalty_day.name)
    snap = snap if isinstance(snap, LoyaltySnapshot) else None
    missing = x.missing([pos_day.name, online_day.name, loyalty_day.name])
    return DailySales(
        day=pos.day, pos_sales=pos.sales, pos_usd=pos.total_usd, online_orders=online.sales,
        online_usd=online.total_usd, total_usd=pos.total_usd + online.total_usd,
        stores=sorted({*pos.stores, *online.stores}),
        loyalty_members=snap.members if snap else None,
        loyalty_points=snap.points_issued if snap else None,
        complete=not missing, missing=missing)


def units_match(records: list[object]) -> bool | str:
    """The warehouse's units out must match what both channels sold, within 2 units."""
    sold = sum(r.units for r in records if isinstance(r, ChannelDay))
    out = next((r.units_out for r in records if isinstance(r, Inventory)), 0)
    return abs(sold - out) <= 2 or f"warehouse shipped {out} units, the tills and web sold {sold}"


@pipeline.stage(inputs=[pos_day, online_day, inventory], output=reconciliation,
                trigger=AllOf(), checks=[ExpectBatch(units_match, "inventory matches sales")])
def reconcile_inventory(x: Inputs) -> Reconciliation:
    pos, online, inv = x[pos_day], x[online_day], x[inventory]
    assert isinstance(pos, ChannelDay) and isinstance(online, ChannelDay)
    assert isinstance(inv, Inventory)
    return Reconciliation(day=inv.day, units_sold=pos.units + online.units,
                          units_out=inv.units_out)


pipeline.sink("files", asset=daily_sales, path=WORKDIR / "reports")
pipeline.sink("files", asset=reconciliation, path=WORKDIR / "reconciliation")
