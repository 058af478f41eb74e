"""The pipeline behind ``v1_topics.json``, in public API that both versions share.

``orders`` feeds a map (``price``) and, with ``payments``, an ``AllOf`` barrier (``settle``):
the old worker leaves barriers half full, ledger records, changelog state and committed
positions; the new worker finishes them.
"""

from __future__ import annotations

from pydantic import BaseModel

from streamflow import AllOf, Asset, Inputs, Pipeline
from streamflow.connectors.testing import MemorySink, MemorySource


class Order(BaseModel):
    id: int
    amount: int


class Payment(BaseModel):
    id: int
    paid: int


class Priced(BaseModel):
    id: int
    total: int


class Settled(BaseModel):
    id: int
    balance: int


orders = Asset("orders", Order, key="id")
payments = Asset("payments", Payment, key="id")
priced = Asset("priced", Priced, key="id")
settled = Asset("settled", Settled, key="id")


def pipeline(order_ids: range, payment_ids: range, sink: MemorySink) -> Pipeline:
    p = Pipeline("formats")
    p.source(MemorySource([[{"id": i, "amount": 10 * i} for i in order_ids]]), asset=orders,
             name="orders-src")
    p.source(MemorySource([[{"id": i, "paid": 10 * i - 1} for i in payment_ids]]),
             asset=payments, name="payments-src")

    @p.stage(inputs=[orders], output=priced, name="price")
    def price(o: Order) -> Priced:
        return Priced(id=o.id, total=o.amount + 1)

    @p.stage(inputs=[orders, payments], output=settled, name="settle", trigger=AllOf())
    def settle(inputs: Inputs) -> Settled:
        o, pay = inputs["orders"], inputs["payments"]
        assert isinstance(o, Order) and isinstance(pay, Payment)
        return Settled(id=o.id, balance=o.amount - pay.paid)

    p.sink(sink, asset=priced, name="priced-sink")
    return p
