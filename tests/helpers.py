"""Test helpers that read what a pipeline wrote, through the same transport it used."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import orjson
from opentelemetry import trace
from pydantic import BaseModel

from streamflow import AllOf, Asset, Inputs, Pipeline, RetryPolicy, Settings
from streamflow.connectors.testing import MemorySink, MemorySource
from streamflow.model import Message
from streamflow.transports import make_transport


async def read_topic(settings: Settings, topic: str, timeout: float = 30.0) -> list[Message]:
    """Everything on ``topic`` (read_committed on Kafka), through the transport itself."""
    transport = make_transport(settings)
    await transport.start()
    try:
        await transport.ensure_topics([topic])
        return await asyncio.wait_for(transport.read_topic(topic), timeout)
    finally:
        await transport.close()


async def wait_for(cond: Callable[[], bool], what: str, timeout: float = 60.0) -> None:
    """Poll ``cond`` until it holds; fail naming ``what`` after ``timeout`` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not cond():
        assert loop.time() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)


def values(msgs: list[Message]) -> list[dict[str, object]]:
    return [orjson.loads(m.value) for m in msgs]


def rec_id(record: dict[str, Any]) -> str:
    """Records with the same ``id`` get the same record id, as a re-read would; a ``_rid`` field
    overrides that (a corrected record: same key, new record)."""
    return f"rec-{record.get('_rid', record['id'])}"


def memory_source(batches: Iterable[Sequence[dict[str, Any]]]) -> MemorySource:
    """An in-memory source (the SDK's test kit) for engine tests: each inner list is one batch
    of raw records, with record ids from :func:`rec_id`."""
    return MemorySource(batches, record_id=rec_id)


class Order(BaseModel):
    id: int
    day: str


class Payment(BaseModel):
    id: int
    day: str


class Report(BaseModel):
    day: str
    order: int
    payment: int


# Orders and payments per day, and a report per day fanning both in.
orders = Asset("orders", Order, key="id", partition_by="day")
payments = Asset("payments", Payment, key="id", partition_by="day")
checked = Asset("checked", Order, key="id", partition_by="day")
reports = Asset("reports", Report, key="day", partition_by="day")


def order_pipeline(name: str, orders_src: object, payments_src: object, sink: MemorySink,
                   user_span: bool = False) -> Pipeline:
    """orders → check (order 4 always fails) → report ⟵ payments (fan-in per day) → sink."""
    p = Pipeline(name)
    p.source(orders_src, asset=orders, name="orders-src")  # type: ignore[arg-type]
    p.source(payments_src, asset=payments, name="payments-src")  # type: ignore[arg-type]

    @p.stage(inputs=[orders], output=checked, retry=RetryPolicy(attempts=1))
    def check(o: Order) -> Order:
        span = trace.get_tracer("user-code").start_as_current_span("lookup customer") \
            if user_span else contextlib.nullcontext()
        with span:
            if o.id == 4:
                raise ValueError("order 4 is cursed")
        return o

    @p.stage(inputs=[checked, payments], output=reports, trigger=AllOf())
    def report(x: Inputs) -> Report:
        return Report(day=x[checked].day, order=x[checked].id,  # type: ignore[attr-defined]
                      payment=x[payments].id)  # type: ignore[attr-defined]

    p.sink(sink, asset=reports)
    return p
