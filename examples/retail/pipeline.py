"""Retail: point-of-sale CSV files → amounts in USD → JSON Lines by day, and a daily report.

Run it with ``streamflow run examples/retail/pipeline.py:pipeline``. ``RETAIL_WORKDIR`` says
where the landing and output folders are (default ``.streamflow/retail`` under the current
directory); ``python examples/retail/demo.py`` seeds a fresh one with the sample files.
"""

from __future__ import annotations

import csv
import os
from datetime import date, datetime
from decimal import Decimal
from pathlib import Path

from pydantic import BaseModel, Field

from streamflow import Asset, Pipeline, Window, WindowRecords

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


class UsdSale(BaseModel):
    sale_id: str
    store: str
    sold_at: datetime
    day: date
    sku: str
    quantity: int
    amount: Decimal
    currency: str
    usd_per_unit: Decimal
    amount_usd: Decimal


class DailySales(BaseModel):
    """One day's report across all stores, in USD."""

    day: date
    sales: int
    stores: list[str]
    total_usd: Decimal


pos_sales = Asset("pos_sales", PosSale, key="sale_id", event_time="sold_at")
usd_sales = Asset("usd_sales", UsdSale, key="sale_id", partition_by="day", event_time="sold_at")


def load_fx(path: Path = HERE / "data" / "fx.csv") -> dict[str, Decimal]:
    with path.open(newline="") as fh:
        return {row["currency"]: Decimal(row["usd_per_unit"]) for row in csv.DictReader(fh)}


FX = load_fx()

pipeline = Pipeline("retail")
pipeline.source("files", asset=pos_sales, path=WORKDIR / "landing", format="csv")


@pipeline.stage(inputs=[pos_sales], output=usd_sales)
def to_usd(sale: PosSale) -> UsdSale:
    if sale.currency not in FX:
        raise ValueError(f"no FX rate for {sale.currency}; add it to data/fx.csv")
    rate = FX[sale.currency]
    return UsdSale(
        **sale.model_dump(),
        day=sale.sold_at.date(),
        usd_per_unit=rate,
        amount_usd=(sale.amount * rate).quantize(Decimal("0.01")),
    )


pipeline.sink("files", asset=usd_sales, path=WORKDIR / "out")

daily_sales = Asset("daily_sales", DailySales, key="day", partition_by="day")


# The fan-in: one run per day over all of that day's sales. The stores' files land once a day,
# whole, so a day is complete a few seconds after its first sale arrives (the deadline); the
# next day's sales close it sooner, through the watermark.
@pipeline.stage(inputs=[usd_sales], output=daily_sales, trigger=Window(
    size_s=86_400, allowed_lateness_s=3_600, deadline_s=5, on_deadline="fire"))
def daily_report(window: WindowRecords) -> DailySales:
    sales = [s for s in window.all() if isinstance(s, UsdSale)]
    return DailySales(
        day=sales[0].day,
        sales=len(sales),
        stores=sorted({s.store for s in sales}),
        total_usd=sum((s.amount_usd for s in sales), Decimal("0")),
    )


pipeline.sink("files", asset=daily_sales, path=WORKDIR / "reports")
