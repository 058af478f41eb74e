"""Retail walking skeleton: point-of-sale CSV files → amounts in USD → JSON Lines by day.

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

from streamflow import Asset, Pipeline

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
