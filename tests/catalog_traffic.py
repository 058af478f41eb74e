"""Control-topic traffic for the catalog's tests, written with the writers the engine uses
(``LedgerBatch``, ``record_message``, ``dead_letter_message``, the gate's hold changelog, the
contract registry, ``BackfillJob``): every format the catalog folds, open and settled runs,
retries, a hold released and one still held, masked dead letters."""

from __future__ import annotations

import os
from datetime import UTC, datetime
from typing import Any

import orjson
from pydantic import BaseModel

from streamflow import Asset, Settings
from streamflow.backfill import BackfillJob
from streamflow.catalog import Source
from streamflow.model import (
    DeadLetter,
    OutMessage,
    RunInput,
    contracts_topic,
    dead_letter_message,
    hold_topic,
    jobs_topic,
    runs_topic,
)
from streamflow.state import (
    LedgerBatch,
    check_contracts,
    ensure_ledger,
    record_message,
    run_entry,
    settled_message,
)
from streamflow.transports import Transport

T0 = 1_796_000_000_000
CHECKS = [{"check": "not_null", "level": "error", "passed": False, "detail": "sku"}]


class Sale(BaseModel):
    sku: str
    amount: float


def _rid(i: int) -> str:
    return f"run-{i:06d}-" + os.urandom(4).hex()


def hold_source(settings: Settings) -> Source:
    return Source(hold_topic(settings.namespace, "gate"), "holds", stage="gate")


async def ensure_topics(t: Transport, settings: Settings) -> None:
    ns = settings.namespace
    await ensure_ledger(t, runs_topic(ns), settings.ledger_retention_s)
    await t.ensure_topics([settings.dead_letter_topic],
                          compacted=[jobs_topic(ns), contracts_topic(ns), hold_topic(ns, "gate")])


async def publish_runs(t: Transport, settings: Settings, batches: int, per_batch: int,
                       parts: int = 2) -> int:
    """``batches`` v2 batches of succeeded runs per partition; returns the runs written."""
    topic, n = runs_topic(settings.namespace), 0
    for _b in range(batches):
        book = LedgerBatch(topic, "price", 3, "priced")
        for p in range(parts):
            for _ in range(per_batch):
                n += 1
                ins = [["sales", f"k{n}", 1, f"arr-{n}"]]
                book.add(p, run_entry(_rid(n), f"k{n}", 1, T0 + n, T0 + n + 5, ins,
                                      [f"out-{n}", f"out2-{n}"], trace_id=f"{n:032x}"))
        await t.publish(book.drain())
    return n


def _v1(topic: str, rid: str, status: Any, attempt: int, ended: int, *, p: int,
        checks: list[dict[str, Any]] | None = None, stage: str = "price") -> OutMessage:
    return record_message(
        topic, run_id=rid, stage=stage, partition="k-" + rid[-4:], status=status,
        attempt=attempt, max_attempts=3, started_ms=ended - 3, ended_ms=ended, mode="live",
        replay=0, inputs=[RunInput("sales", "k-" + rid[-4:], 1, "a-" + rid)], outputs=[],
        error={"type": "ValueError", "message": "boom"} if status != "released" else None,
        trace_id=None, checks=checks, kafka_partition=p, output="priced")


async def publish_lifecycles(t: Transport, settings: Settings) -> None:
    """A retried run settled by its next attempt, a dead-lettered one left open, a gated run
    held then released (hold tombstoned), another still held."""
    ns, topic = settings.namespace, runs_topic(settings.namespace)
    retried, dead, released, held = (_rid(900_000 + i) for i in range(4))
    await t.publish([_v1(topic, retried, "retrying", 1, T0 + 10, p=0),
                     _v1(topic, dead, "dead-lettered", 3, T0 + 11, p=1)])
    book = LedgerBatch(topic, "price", 3, "priced")
    book.add(0, run_entry(retried, "k-" + retried[-4:], 2, T0 + 20, T0 + 25,
                          [["sales", "k-" + retried[-4:], 1, "a-" + retried]], ["o-r"]),
             settle_at=0)
    await t.publish(book.drain())
    holds = hold_topic(ns, "gate")
    for rid, p in ((released, 0), (held, 1)):
        hold = {"v": 1, "partition": "k-" + rid[-4:], "kafka_partition": p, "since_ms": T0,
                "held_by": {rid: "sales:x"}, "checks": CHECKS, "parked": [{"m": 1}],
                "parked_bytes": 10}
        await t.publish([_v1(topic, rid, "held", 1, T0 + 30, p=p, checks=CHECKS, stage="gate"),
                         OutMessage(holds, orjson.dumps(hold), hold["partition"].encode(), [],
                                    partition=p)])
    await t.publish([settled_message(topic, released, 0),
                     _v1(topic, released, "released", 1, T0 + 40, p=0, checks=CHECKS,
                         stage="gate"),
                     OutMessage(holds, b"", ("k-" + released[-4:]).encode(), [], partition=0)])


async def publish_others(t: Transport, settings: Settings) -> None:
    """Dead letters (one with a sensitive field), a contract, a backfill job twice."""
    dls = [dead_letter_message(settings.dead_letter_topic, DeadLetter(
        reason=f"bad row {i}", stage="price", origin={"file": "f.csv", "line": i},
        payload=orjson.dumps({"sku": f"s{i}", "card": "4111"}).decode(), arrival_id=f"a{i}",
        run_id=f"r{i}", attempts=3, sensitive=("card",) if i == 0 else ()), None)
        for i in range(3)]
    await t.publish(dls)
    await check_contracts(t, settings.namespace, [Asset("sales", Sale, key="sku")])
    job = BackfillJob(id="bf-1", target="m:p", pipeline="p", asset="sales", stages=["price"],
                      start=datetime(2026, 1, 1, tzinfo=UTC), end=datetime(2026, 1, 2, tzinfo=UTC),
                      created_ms=T0)
    await t.publish([job.message(settings.namespace)])
    job.status = "completed"
    await t.publish([job.message(settings.namespace)])


async def publish_all(t: Transport, settings: Settings, batches: int = 4,
                      per_batch: int = 25) -> None:
    await ensure_topics(t, settings)
    await publish_runs(t, settings, batches, per_batch)
    await publish_lifecycles(t, settings)
    await publish_others(t, settings)
