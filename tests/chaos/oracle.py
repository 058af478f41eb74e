"""The chaos oracle: what came out (read_committed topics, the PostgreSQL table, dead letters)
against what the plan says must come out, exactly once each."""

from __future__ import annotations

import re
import sqlite3
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import asyncpg
import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition

from streamflow.model import Message
from streamflow.transports import KafkaTransport

from .feed import Plan

POISON_ID = re.compile(r"poison-\d{6}")
Rows = list[dict[str, Any]]


async def read_kafka(bootstrap: str, namespace: str,
                     extra: tuple[str, ...] = ()) -> dict[str, Rows]:
    """``priced``, ``settled``, the dead letters and ``extra`` topics, read_committed."""
    got = await read_messages(bootstrap, namespace, ("priced", "settled", "dead-letters", *extra))
    return {name: [orjson.loads(m.value) for m in msgs] for name, msgs in got.items()}


async def read_messages(bootstrap: str, namespace: str,
                        names: tuple[str, ...]) -> dict[str, list[Message]]:
    """The records of ``<namespace>.<name>`` topics as read_committed readers see them, with
    their partitions, offsets and timestamps."""
    t = KafkaTransport(bootstrap)
    await t.start()
    try:
        return {name: await t.read_topic(f"{namespace}.{name}") for name in names}
    finally:
        await t.close()


async def open_transactions(bootstrap: str, namespace: str,
                            extra: tuple[str, ...] = ()) -> dict[str, int]:
    """Partitions of the output topics whose last stable offset lags the high watermark: an
    open transaction would hide records from a read_committed reader."""
    out: dict[str, int] = {}
    for level in ("read_committed", "read_uncommitted"):
        c = AIOKafkaConsumer(bootstrap_servers=bootstrap, isolation_level=level)
        await c.start()
        try:
            await c._client.force_metadata_update()
            tps = [TopicPartition(f"{namespace}.{name}", p)
                   for name in ("priced", "settled", "dead-letters", *extra)
                   for p in sorted(c.partitions_for_topic(f"{namespace}.{name}") or ())]
            assert tps, f"no partitions of {namespace}'s output topics"
            for tp, off in (await c.end_offsets(tps)).items():
                key = f"{tp.topic}:{tp.partition}"
                out[key] = off - out[key] if key in out else off
        finally:
            await c.stop()
    return {k: v for k, v in out.items() if v}


def read_sqlite(db: Path, namespace: str) -> dict[str, Rows]:
    got = read_sqlite_messages(db, namespace, ("priced", "settled", "dead-letters"))
    return {name: [orjson.loads(m.value) for m in msgs] for name, msgs in got.items()}


def read_sqlite_messages(db: Path, namespace: str,
                         names: tuple[str, ...]) -> dict[str, list[Message]]:
    """The records of ``<namespace>.<name>`` topics of an embedded log, with their offsets
    and append times."""
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return {name: [Message(f"{namespace}.{name}", 0, off, key, value, [], ts)
                       for off, key, value, ts in con.execute(
                           "SELECT off, key, value, ts FROM log WHERE topic=? ORDER BY off",
                           (f"{namespace}.{name}",))]
                for name in names}
    finally:
        con.close()


async def read_pg(dsn: str, table: str) -> Rows:
    conn = await asyncpg.connect(dsn)
    try:
        return [dict(r) for r in await conn.fetch(
            f"SELECT _key, order_id, total, paid, balance FROM {table}")]
    finally:
        await conn.close()


def _tally(rows: Iterable[dict[str, Any]], key: str, expected: dict[str, Any],
           ok: Callable[[dict[str, Any], Any], bool]) -> dict[str, int]:
    seen: Counter[str] = Counter()
    unexpected = mismatched = 0
    for r in rows:
        k = str(r.get(key))
        if k not in expected:
            unexpected += 1
            continue
        seen[k] += 1
        if not ok(r, expected[k]):
            mismatched += 1
    return {"expected": len(expected), "seen": sum(seen.values()),
            "lost": sum(1 for k in expected if k not in seen),
            "duplicated": sum(c - 1 for c in seen.values() if c > 1),
            "unexpected": unexpected, "mismatched": mismatched}


def judge(plan: Plan, topics: dict[str, Rows], pg: Rows,
          partition_of: Callable[[str], int]) -> dict[str, Any]:
    """The report's outcome keys; every count the tests require to be 0 is summed over the
    outputs (priced, settled, PostgreSQL rows, and on Kafka the ``kafka`` sink's export of
    priced)."""
    settled = {k: (plan.orders[k], plan.paid[k]) for k in plan.settled}
    outputs = {
        "priced": _tally(topics["priced"], "order_id", plan.orders,
                         lambda r, total: abs(r["total"] - total) < 1e-6),
        "settled": _tally(topics["settled"], "order_id", settled,
                          lambda r, e: abs(r["total"] - e[0]) < 1e-6
                          and abs(r["paid"] - e[1]) < 1e-6),
        "postgres": _tally(pg, "_key", settled,
                           lambda r, e: r["order_id"] == r["_key"]
                           and abs(r["total"] - e[0]) < 1e-6 and abs(r["paid"] - e[1]) < 1e-6),
    }
    if "export.priced" in topics:
        outputs["exported"] = _tally(topics["export.priced"], "order_id", plan.orders,
                                     lambda r, total: abs(r["total"] - total) < 1e-6)
    dead: dict[str, list[dict[str, Any]]] = defaultdict(list)
    stray: list[str] = []
    for d in topics["dead-letters"]:
        found = POISON_ID.search(str(d.get("payload", "")))
        if found is None or found.group() not in plan.poison:
            stray.append(f"{d.get('kind')} {d.get('stage')}: {str(d.get('reason', ''))[:160]}")
        else:
            dead[found.group()].append(d)
    without_reason = sum(1 for pid, ds in dead.items() if not all(x.get("reason") for x in ds))
    return {
        "records": len(plan.events),
        "good_orders": len(plan.orders), "payments": len(plan.paid),
        "lost": sum(o["lost"] for o in outputs.values()),
        "duplicated": sum(o["duplicated"] for o in outputs.values()),
        "unexpected": sum(o["unexpected"] for o in outputs.values()),
        "mismatched": sum(o["mismatched"] for o in outputs.values()),
        "outputs": outputs,
        "poison": len(plan.poison),
        "poison_by_kind": dict(Counter(plan.poison.values())),
        "dead_lettered": len(dead),
        "dead_letter_duplicated": sum(len(ds) - 1 for ds in dead.values()),
        "dead_letter_duplicated_by_kind": dict(Counter(
            plan.poison[pid] for pid, ds in dead.items() for _ in ds[1:])),
        "dead_letter_duplicated_sample": {pid: [str(d.get("reason", ""))[:60] for d in ds]
                                          for pid, ds in [x for x in dead.items()
                                                          if len(x[1]) > 1][:5]},
        "dead_letter_missing": sorted(set(plan.poison) - set(dead))[:20],
        "dead_letter_without_reason": without_reason,
        "dead_letter_stray": len(stray),
        "dead_letter_stray_sample": stray[:5],
        "dead_letter_reasons": _reason_sample(dead, plan),
        "poison_blocking": _blocking(plan, topics, partition_of),
    }


def _reason_sample(dead: dict[str, list[dict[str, Any]]], plan: Plan) -> dict[str, str]:
    """One reason per poison kind, as the dead letter says it."""
    out: dict[str, str] = {}
    for pid, ds in sorted(dead.items()):
        kind = plan.poison[pid]
        if kind not in out:
            out[kind] = str(ds[0].get("reason", ""))[:200]
    return out


def _blocking(plan: Plan, topics: dict[str, Rows], partition_of: Callable[[str], int]) -> int:
    """Poison records with no good record after them on their input partition that made it
    through (priced for an order, settled for a payment): a blocked partition shows here."""
    through = {"orders": {str(r.get("order_id")) for r in topics["priced"]},
               "payments": {str(r.get("order_id")) for r in topics["settled"]}}
    waiting: dict[tuple[str, int], int] = defaultdict(int)
    for e in plan.events:
        where = (e.asset, partition_of(e.key))
        if e.kind in ("malformed", "contract", "oversized"):
            waiting[where] += 1
        elif e.key in through[e.asset] and (e.asset == "orders" or e.key in plan.orders):
            waiting[where] = 0
    return sum(waiting.values())


async def drop_table(dsn: str, table: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(f"DROP TABLE IF EXISTS {table}")
    finally:
        await conn.close()


def check(report: dict[str, Any], kills: int, recovery_bound_s: float = 10) -> None:
    """What the issue requires, on either transport (and on the three-node cluster, where a
    killed broker's loss is noticed before anything moves: ``recovery_bound_s``)."""
    outcome = {k: report[k] for k in ("lost", "duplicated", "unexpected", "mismatched",
                                      "dead_letter_duplicated", "dead_letter_stray",
                                      "dead_letter_without_reason", "poison_blocking")}
    assert outcome == dict.fromkeys(outcome, 0), (outcome, report["outputs"])
    assert report["poison"] >= 1000
    assert report["dead_lettered"] == report["poison"], report["dead_letter_missing"]
    assert len(report["recovery_s"]) == kills, report["faults"]
    assert all(r is not None and r < recovery_bound_s for r in report["recovery_s"]), \
        report["faults"]
    assert all(f["unsent"] >= 0.2 for f in report["faults"]), report["faults"]
