"""The chaos suite's pipeline: orders are priced (a map stage), and each priced order is settled
once its payment is in (a barrier joined by order id); settled orders are upserted into
PostgreSQL.

``streamflow worker tests/chaos/pipeline.py:pipeline`` loads this file by path, so it imports
nothing from the test package. It is configured by the environment:

- ``CHAOS_PG_DSN``, ``CHAOS_PG_TABLE``: the postgres sink's target;
- ``CHAOS_LANDING``: set on the embedded transport, where the input cannot come from another
  process: ``files`` sources watch ``<landing>/orders`` and ``<landing>/payments``. Unset (on
  Kafka), the harness publishes the arrivals itself and the sources are idle.
- ``CHAOS_EXPORT_BOOTSTRAP``, ``CHAOS_EXPORT_TOPIC``: set on Kafka, a ``kafka`` sink also
  writes every priced order to that topic of the same cluster (inside the input's
  transaction, exactly once).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from pydantic import BaseModel

from streamflow import AllOf, Asset, Inputs, Pipeline
from streamflow.connectors.testing import IdleSource


class Order(BaseModel):
    order_id: str
    amount: float
    qty: int
    note: str = ""  # optional: lets an oversized record be valid for the contract


class Payment(BaseModel):
    order_id: str
    paid: float
    note: str = ""


class Priced(BaseModel):
    order_id: str
    amount: float
    qty: int
    total: float


class Settled(BaseModel):
    order_id: str
    total: float
    paid: float
    balance: float


def total_of(amount: float, qty: int) -> float:
    return round(amount * qty * 1.2, 2)


orders = Asset("orders", Order, key="order_id", partition_by="order_id")
payments = Asset("payments", Payment, key="order_id", partition_by="order_id")
priced = Asset("priced", Priced, key="order_id", partition_by="order_id")
settled = Asset("settled", Settled, key="order_id", partition_by="order_id")

pipeline = Pipeline("chaos")

_landing = os.environ.get("CHAOS_LANDING")
for _asset in (orders, payments):
    if _landing:
        pipeline.source("files", asset=_asset, name=f"{_asset.name}-files",
                        path=Path(_landing) / _asset.name, format="jsonl", watch=True,
                        settle_s=0.05, poll_interval_s=0.05)
    else:
        pipeline.source(IdleSource(), asset=_asset, name=f"{_asset.name}-idle")


@pipeline.stage(inputs=[orders], output=priced)
def price(o: Order) -> Priced:
    return Priced(order_id=o.order_id, amount=o.amount, qty=o.qty,
                  total=total_of(o.amount, o.qty))


@pipeline.stage(inputs=[priced, payments], output=settled, trigger=AllOf())
def settle(x: Inputs) -> Settled:
    p, pay = x[priced], x[payments]
    assert isinstance(p, Priced) and isinstance(pay, Payment)
    return Settled(order_id=p.order_id, total=p.total, paid=pay.paid,
                   balance=round(pay.paid - p.total, 2))


pipeline.sink("postgres", asset=settled, name="pg-settled",
              dsn=os.environ.get("CHAOS_PG_DSN",
                                 "postgresql://streamflow:streamflow@127.0.0.1:5432/streamflow"),
              table=os.environ.get("CHAOS_PG_TABLE", "chaos_settled"),
              columns={"order_id": "text", "total": "double precision",
                       "paid": "double precision", "balance": "double precision"})

if os.environ.get("CHAOS_EXPORT_TOPIC"):
    pipeline.sink("kafka", asset=priced, name="kafka-priced",
                  bootstrap=os.environ["CHAOS_EXPORT_BOOTSTRAP"],
                  topic=os.environ["CHAOS_EXPORT_TOPIC"])

# `streamflow -v` logs everything at DEBUG; the client library's per-fetch lines would drown
# the engine's, so it stays at INFO (joins, assignments, errors).
if logging.getLogger().level == logging.DEBUG:
    for _name in ("aiokafka", "asyncio", "aiosqlite", "asyncpg", "urllib3"):
        logging.getLogger(_name).setLevel(logging.INFO)
