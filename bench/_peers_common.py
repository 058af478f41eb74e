"""What every system in the peers benchmark shares: the records, the work, the run spec.

Each system gets byte-identical input: StreamFlow arrivals (the record's JSON as the value, the
arrival metadata in headers) keyed by the record id and placed on partition murmur2(id) mod 4,
so both inputs of the join are co-partitioned for every system. The other systems ignore the
headers. The work (``price``, ``settle``) is the same function everywhere.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

import orjson
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.partitioner import murmur2
from pydantic import BaseModel

from streamflow import Arrival, stable_id

from ._kafka import client_options

PARTITIONS = 4
THROUGHPUT_WORKLOADS = ("passthrough", "map", "join")
Headers = list[tuple[str, bytes]]


class Sale(BaseModel):
    id: str
    store: str
    sku: str
    quantity: int
    amount: float
    currency: str
    sold_at: str
    sent_ns: int
    channel: str


class Priced(BaseModel):
    id: str
    store: str
    sku: str
    quantity: int
    amount_usd: float
    sold_at: str
    sent_ns: int


class Payment(BaseModel):
    id: str
    method: str
    paid_usd: float
    paid_at: str
    sent_ns: int
    channel: str


class Settled(BaseModel):
    id: str
    amount_usd: float
    paid_usd: float
    balanced: bool
    sent_ns: int


def price(s: Sale) -> Priced:
    """The map workload's transform."""
    return Priced(id=s.id, store=s.store, sku=s.sku, quantity=s.quantity,
                  amount_usd=round(s.amount * 1.08, 2), sold_at=s.sold_at, sent_ns=s.sent_ns)


def settle(s: Sale, p: Payment) -> Settled:
    """The join workload's output, once a sale and its payment have both arrived."""
    usd = round(s.amount * 1.08, 2)
    return Settled(id=s.id, amount_usd=usd, paid_usd=p.paid_usd,
                   balanced=abs(usd - p.paid_usd) < 0.01, sent_ns=max(s.sent_ns, p.sent_ns))


def sale_json(i: int, sent_ns: int, rnd: random.Random, prefix: str = "S") -> bytes:
    """About 200 bytes of JSON."""
    return orjson.dumps({
        "id": f"{prefix}{i:09d}", "store": f"store-{i % 40}", "sku": f"sku-{rnd.randrange(5000)}",
        "quantity": 1 + i % 5, "amount": round(rnd.uniform(1, 500), 2), "currency": "EUR",
        "sold_at": "2026-11-25T10:00:00Z", "sent_ns": sent_ns, "channel": "web-checkout-eu"})


def payment_json(i: int, sent_ns: int, rnd: random.Random) -> bytes:
    return orjson.dumps({
        "id": f"S{i:09d}", "method": "card", "paid_usd": round(rnd.uniform(1, 540), 2),
        "paid_at": "2026-11-25T10:00:05Z", "sent_ns": sent_ns,
        "channel": "web-checkout-eu-payments-gateway-7"})


def partition_of(key: bytes, partitions: int = PARTITIONS) -> int:
    return int(murmur2(key) & 0x7FFFFFFF) % partitions


def traceparent(rnd: random.Random, ratio: float) -> bytes:
    """As StreamFlow's source would stamp it under a ``ratio`` sampler."""
    flags = 1 if rnd.random() < ratio else 0
    return b"00-%032x-%016x-%02x" % (rnd.getrandbits(128) or 1, rnd.getrandbits(64) or 1, flags)


def arrival_headers(asset: str, key: str, tp: bytes | None = None) -> Headers:
    """The headers StreamFlow's source would publish an arrival of ``asset`` with."""
    return Arrival(stable_id(asset, key), asset, key, 1, 0, "bench", "live", key.encode(), b"",
                   traceparent=tp).headers()


@dataclass
class Spec:
    """One run of one system: handed to the child process as JSON."""

    system: str
    settings: str
    workload: str
    ns: str
    bootstrap: str
    inputs: list[str]
    output: str
    expect: int
    partitions: int = PARTITIONS
    env: dict[str, str] = field(default_factory=dict)
    trace_ratio: float = 0.0
    """Share of the seeded arrivals whose traceparent says sampled (0: no traceparent)."""

    def topic(self, name: str) -> str:
        return f"{self.ns}.{name}"

    def to_json(self) -> str:
        return orjson.dumps(asdict(self)).decode()

    @classmethod
    def from_json(cls, raw: str) -> Spec:
        return cls(**orjson.loads(raw))


async def create_topics(bootstrap: str, topics: list[str], partitions: int = PARTITIONS,
                        log_append_time: bool = False) -> None:
    admin = AIOKafkaAdminClient(**client_options(bootstrap))
    await admin.start()
    try:
        cfg = {"message.timestamp.type": "LogAppendTime"} if log_append_time else None
        await admin.create_topics([NewTopic(t, partitions, 1, topic_configs=cfg)
                                   for t in topics])
    finally:
        await admin.close()


def _records(workload: str, n: int, trace_ratio: float
             ) -> Iterator[tuple[str, bytes, bytes, Headers]]:
    """(asset, key, value, headers) in send order; the join's two sides interleave in chunks."""
    rnd = random.Random(7)
    if workload != "join":
        for i in range(n):
            tp = traceparent(rnd, trace_ratio) if trace_ratio else None
            key = f"S{i:09d}"
            yield "in", key.encode(), sale_json(i, 0, rnd), arrival_headers("in", key, tp)
        return
    keys = n // 2
    for lo in range(0, keys, 500):
        for side in ("sales", "payments"):
            for i in range(lo, min(keys, lo + 500)):
                tp = traceparent(rnd, trace_ratio) if trace_ratio else None
                key = f"S{i:09d}"
                value = (sale_json if side == "sales" else payment_json)(i, 0, rnd)
                yield side, key.encode(), value, arrival_headers(side, key, tp)


async def seed(spec: Spec, n: int) -> None:
    """Fill the input topics of ``spec`` with ``n`` records through the batch builder."""
    producer = AIOKafkaProducer(**client_options(spec.bootstrap), linger_ms=5,
                                max_batch_size=512 * 1024, acks="all", enable_idempotence=True)
    await producer.start()
    try:
        batches: dict[tuple[str, int], Any] = {}
        futs: list[asyncio.Future[Any]] = []
        for asset, key, value, headers in _records(spec.workload, n, spec.trace_ratio):
            dest = (spec.topic(asset), partition_of(key, spec.partitions))
            b = batches.get(dest)
            if b is None:
                b = batches[dest] = producer.create_batch()
            if b.append(key=key, value=value, timestamp=None, headers=headers) is None:
                futs.append(await producer.send_batch(b, dest[0], partition=dest[1]))
                b = batches[dest] = producer.create_batch()
                b.append(key=key, value=value, timestamp=None, headers=headers)
            if len(futs) > 64:
                await asyncio.gather(*futs)
                futs.clear()
        for (topic, part), b in batches.items():
            futs.append(await producer.send_batch(b, topic, partition=part))
        await asyncio.gather(*futs)
    finally:
        await producer.stop()
