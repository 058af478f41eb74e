"""The chaos suite's input: good orders and payments with poison mixed in, fed at a steady rate.

The plan is a seeded sequence of events. Each good order gets a payment with probability
``pay_ratio``, usually shortly after the order, sometimes before it. Poison records carry a
unique id (``poison-NNNNNN``) in their text, so each can be found again in its dead letter:
malformed bytes (not JSON), contract violations (valid JSON missing or mistyping a required
field) and oversized records (over ``max_record_bytes``, under 900 KiB).

On Kafka the harness publishes the events as StreamFlow arrivals (headers included, placed by
partition key as the engine places them); on the embedded transport it lands them as JSON
Lines files that the worker's ``files`` sources read.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import orjson
from aiokafka import AIOKafkaProducer
from aiokafka.partitioner import murmur2

from streamflow import Arrival, stable_id

from .pipeline import total_of

log = logging.getLogger("chaos")

Kind = Literal["order", "payment", "malformed", "contract", "oversized"]
POISON_KINDS: tuple[Kind, ...] = ("malformed", "contract", "oversized")


@dataclass(slots=True)
class Event:
    asset: str  # orders | payments
    kind: Kind
    key: str  # order id, or poison id
    line: bytes  # the record's JSON (or garbage), one line


@dataclass
class Plan:
    events: list[Event]
    orders: dict[str, float] = field(default_factory=dict)  # good order id -> priced total
    paid: dict[str, float] = field(default_factory=dict)  # order id -> paid, payment sent
    poison: dict[str, Kind] = field(default_factory=dict)  # poison id -> kind

    @property
    def settled(self) -> set[str]:
        return set(self.orders) & set(self.paid)


def make_plan(seed: int, n_orders: int, n_poison: int, pay_ratio: float = 0.9,
              oversized: int = 60, max_record_bytes: int = 262144) -> Plan:
    rnd = random.Random(seed)
    slots: list[tuple[float, Event]] = []
    plan = Plan([])
    for i in range(n_orders):
        oid = f"o{i:07d}"
        amount, qty = round(rnd.uniform(1, 500), 2), rnd.randint(1, 9)
        rec = {"order_id": oid, "amount": amount, "qty": qty}
        slots.append((i, Event("orders", "order", oid, orjson.dumps(rec))))
        plan.orders[oid] = total_of(amount, qty)
        if rnd.random() < pay_ratio:
            paid = round(plan.orders[oid] + rnd.choice((0.0, 0.0, 1.5, -2.25)), 2)
            # Mostly after its order, sometimes before: the barrier takes either order.
            at = i + rnd.uniform(-15, 150)
            slots.append((at, Event("payments", "payment", oid,
                                    orjson.dumps({"order_id": oid, "paid": paid}))))
            plan.paid[oid] = paid
    # Poison anywhere but the last 3%: good records follow every one on its partition.
    bad: list[Kind] = ["contract", "malformed"]
    big: list[Kind] = ["oversized"]
    kinds = big * oversized + [bad[j % 2] for j in range(n_poison - oversized)]
    rnd.shuffle(kinds)
    for j, kind in enumerate(kinds):
        pid = f"poison-{j:06d}"
        asset = "orders" if rnd.random() < 0.6 else "payments"
        slots.append((rnd.uniform(0, n_orders * 0.97), Event(asset, kind, pid,
                                                              _poison(rnd, kind, asset, pid,
                                                                      max_record_bytes))))
        plan.poison[pid] = kind
    slots.sort(key=lambda s: s[0])
    plan.events = [e for _, e in slots]
    return plan


def _poison(rnd: random.Random, kind: Kind, asset: str, pid: str, limit: int) -> bytes:
    if kind == "malformed":
        return rnd.choice((b'{"order_id": "%s", "amount": 1.5, "qty"' % pid.encode(),
                           b"%s;not json at all;{{" % pid.encode(),
                           b'["%s", 1, 2' % pid.encode()))
    if kind == "contract":
        if asset == "orders":
            return orjson.dumps(rnd.choice((
                {"order_id": pid, "qty": 2},  # amount missing
                {"order_id": pid, "amount": "a lot", "qty": 1},
                {"order_id": pid, "amount": 3.5, "qty": "seven"})))
        return orjson.dumps(rnd.choice(({"order_id": pid}, {"order_id": pid, "paid": "none"})))
    # Oversized: valid for the contract (an optional field), so only the size stops it.
    size = rnd.randint(limit + 1024, limit + 60_000)
    base = {"order_id": pid, "amount": 1.0, "qty": 1} if asset == "orders" \
        else {"order_id": pid, "paid": 1.0}
    return orjson.dumps({**base, "note": "x" * size})


def arrival_of(e: Event) -> Arrival:
    """As a source publishes it: keyed and placed by order id (the poison by its own id)."""
    return Arrival(stable_id(e.asset, e.key), e.asset, e.key, 1, int(time.time() * 1000),
                   f"source:{e.asset}-chaos", "live", e.key.encode(), e.line)


def partition_of(key: str, partitions: int) -> int:
    return int(murmur2(key.encode()) & 0x7FFFFFFF) % partitions


class Feeder:
    """Sends the plan's events at ``rate`` per second, in 100 ms ticks. ``pause()`` and
    ``resume()`` bracket a broker restart, so no send is in flight when the broker dies (a
    resend could duplicate input); the schedule then moves by the pause."""

    def __init__(self, plan: Plan, rate: float) -> None:
        self.plan, self.rate = plan, rate
        self.sent = 0
        self.started = 0.0
        self.finished = 0.0
        self.paused_s = 0.0
        self._paused_at = 0.0
        self._running = asyncio.Event()
        self._running.set()
        self._idle = asyncio.Event()
        self._idle.set()

    @property
    def fraction_sent(self) -> float:
        return self.sent / len(self.plan.events)

    async def pause(self) -> None:
        self._running.clear()
        self._paused_at = time.time()
        await self._idle.wait()

    def resume(self) -> None:
        """Go on at the same rate: the schedule moves by the pause instead of catching up
        in a burst."""
        self.paused_s += time.time() - self._paused_at
        self._running.set()

    async def run(self, send: Callable[[list[Event]], object]) -> None:
        self.started = time.time()
        events = self.plan.events
        while self.sent < len(events):
            await self._running.wait()
            due = min(len(events),
                      int((time.time() - self.started - self.paused_s) * self.rate) + 1)
            if due > self.sent:
                chunk = events[self.sent:min(due, self.sent + 2000)]
                self._idle.clear()
                try:
                    result = send(chunk)
                    if asyncio.iscoroutine(result):
                        await result
                    self.sent += len(chunk)
                finally:
                    self._idle.set()
            await asyncio.sleep(0.1)
        self.finished = time.time()


class KafkaInput:
    """An idempotent acks=all producer of the plan's arrivals onto ``<ns>.<asset>``."""

    def __init__(self, bootstrap: str, namespace: str, partitions: int) -> None:
        self.namespace, self.partitions = namespace, partitions
        self.producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all",
                                         enable_idempotence=True, linger_ms=5,
                                         max_batch_size=1024 * 1024,
                                         max_request_size=1024 * 1024)
        self.errors = 0

    async def start(self) -> None:
        await self.producer.start()

    async def stop(self) -> None:
        with contextlib.suppress(Exception):
            await self.producer.stop()

    async def send(self, chunk: list[Event]) -> None:
        """Every record of the chunk acknowledged; on an error, the unacknowledged ones again
        (counted: a resend after an ambiguous failure could duplicate an input)."""
        todo = chunk
        while todo:
            futs = []
            for e in todo:
                arr = arrival_of(e)
                futs.append(await self.producer.send(
                    f"{self.namespace}.{e.asset}", arr.value, key=arr.key,
                    headers=arr.headers(), partition=partition_of(e.key, self.partitions)))
            results = await asyncio.gather(*futs, return_exceptions=True)
            failed = [e for e, r in zip(todo, results, strict=True)
                      if isinstance(r, BaseException)]
            if failed:
                self.errors += 1
                log.warning("input send: %d of %d failed (%r); resending", len(failed),
                            len(todo), next(r for r in results if isinstance(r, BaseException)))
                await asyncio.sleep(0.5)
            todo = failed


class FileInput:
    """JSON Lines files into ``<landing>/orders`` and ``<landing>/payments``: written under a
    temporary name, then renamed into place (the source skips ``.tmp`` files)."""

    def __init__(self, landing: Path) -> None:
        self.landing = landing
        self.n = 0
        for asset in ("orders", "payments"):
            (landing / asset).mkdir(parents=True, exist_ok=True)

    def send(self, chunk: list[Event]) -> None:
        for asset in ("orders", "payments"):
            lines = [e.line for e in chunk if e.asset == asset]
            if not lines:
                continue
            folder = self.landing / asset
            tmp = folder / f"{self.n:06d}.jsonl.tmp"
            tmp.write_bytes(b"\n".join(lines) + b"\n")
            os.replace(tmp, folder / f"{self.n:06d}.jsonl")
        self.n += 1
