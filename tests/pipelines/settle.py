"""Orders and payments as JSON Lines files; a map stage prices orders, a barrier settles each
order once its payment is in. For crash, scale-out and shutdown tests of ``streamflow worker``."""

from __future__ import annotations

import os
from pathlib import Path

from pydantic import BaseModel

from streamflow import AllOf, Asset, Inputs, Pipeline

WORKDIR = Path(os.environ.get("SETTLE_WORKDIR", ".streamflow/settle"))


class Order(BaseModel):
    order_id: str
    amount: float


class Payment(BaseModel):
    order_id: str
    paid: float


class Settled(BaseModel):
    order_id: str
    amount: float
    paid: float


orders = Asset("orders", Order, key="order_id", partition_by="order_id")
payments = Asset("payments", Payment, key="order_id", partition_by="order_id")
priced = Asset("priced", Order, key="order_id", partition_by="order_id")
settled = Asset("settled", Settled, key="order_id", partition_by="order_id")

pipeline = Pipeline("settle")
for asset in (orders, payments):
    pipeline.source("files", asset=asset, name=f"{asset.name}-files",
                    path=WORKDIR / asset.name, format="jsonl", watch=True,
                    settle_s=0.05, poll_interval_s=0.05)


@pipeline.stage(inputs=[orders], output=priced)
def price(o: Order) -> Order:
    return Order(order_id=o.order_id, amount=round(o.amount * 1.2, 2))


@pipeline.stage(inputs=[priced, payments], output=settled, trigger=AllOf())
def settle(x: Inputs) -> Settled:
    return Settled(order_id=x[priced].order_id, amount=x[priced].amount,  # type: ignore[attr-defined]
                   paid=x[payments].paid)  # type: ignore[attr-defined]


pipeline.sink("files", asset=settled, path=WORKDIR / "out")
