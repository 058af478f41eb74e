"""The postgres sink against plain asyncpg COPY: throughput into a keyed table, and replay.

Both write the same rows, in the same batches the engine hands a sink (``--batch``, the
default ``poll_batch``), each batch its own transaction, into identical fresh tables with a
primary key. The sink runs at its defaults through write()/flush(), as the engine drives it.
Then 10% of the rows are replayed through the sink: the row count and contents must not move
(``replay_rows_per_s`` is the sink's rate when every key already exists, i.e. pure upserts).
``met`` is false if either table lost a row, or the replay moved the count or the contents.
"""

from __future__ import annotations

import argparse
import sys
import time
import uuid
from typing import Any

import asyncpg  # type: ignore[import-untyped]

from streamflow import devservices as services
from streamflow.connectors import ConnectorContext, SinkRecord, build_sink

DDL = ("(_key text PRIMARY KEY, _arrival_id text, id bigint, customer text, amount double "
       "precision, currency text, paid boolean, note text)")
COLUMNS = ["_key", "_arrival_id", "id", "customer", "amount", "currency", "paid", "note"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--rows", type=int, default=200_000, help="rows to write (200000)")
    parser.add_argument("--batch", type=int, default=500,
                        help="records per write()/flush() and per COPY (the engine's poll_batch)")


def _records(n: int) -> list[SinkRecord]:
    return [
        SinkRecord(f"order-{i}", f"arr-{i:012d}", "2026-01-01", {
            "id": i, "customer": f"c{i % 997}", "amount": round(i * 0.37, 2),
            "currency": "EUR" if i % 3 else "USD", "paid": i % 2 == 0,
            "note": "x" * (i % 40),
        })
        for i in range(n)
    ]


def _chunks(recs: list[SinkRecord], size: int) -> list[list[SinkRecord]]:
    return [recs[i:i + size] for i in range(0, len(recs), size)]


async def _open_sink(dsn: str, table: str) -> Any:
    sink = build_sink("postgres", {"dsn": dsn, "table": table})
    await sink.setup(ConnectorContext("bench", "orders", "/tmp"))
    return sink


async def _interleaved(dsn: str, conn: Any, sink_t: str, copy_t: str,
                       batches: list[list[SinkRecord]]) -> tuple[float, float]:
    """Alternate one sink batch and one COPY batch, timing each, so that both see the same
    machine (other work on a shared box slows both sides alike)."""
    sink = await _open_sink(dsn, sink_t)
    sink_s = copy_s = 0.0
    for b in batches:
        t0 = time.perf_counter()
        await sink.write(b)
        await sink.flush()
        t1 = time.perf_counter()
        rows = [(r.key, r.arrival_id, *r.value.values()) for r in b]
        await conn.copy_records_to_table(copy_t, records=rows, columns=COLUMNS)
        t2 = time.perf_counter()
        sink_s, copy_s = sink_s + t1 - t0, copy_s + t2 - t1
    await sink.stop()
    return sink_s, copy_s


async def _fingerprint(conn: Any, table: str) -> tuple[int, str]:
    row = await conn.fetchrow(
        f"SELECT count(*), md5(string_agg(t::text, '|' ORDER BY _key)) FROM {table} t")
    return int(row[0]), str(row[1])


async def run(args: argparse.Namespace) -> dict[str, Any]:
    services.up(["postgres"])
    dsn = services.POSTGRES_DSN
    tag = uuid.uuid4().hex[:8]
    sink_t, copy_t = f"bench_sink_{tag}", f"bench_copy_{tag}"
    recs = _records(args.rows)
    batches = _chunks(recs, args.batch)
    conn = await asyncpg.connect(dsn)
    try:
        # Identical tables: the sink's own (created here from the same DDL) and COPY's.
        for t in (sink_t, copy_t):
            await conn.execute(f"CREATE TABLE {t} {DDL}")
        print(f"pg-sink: {args.rows} rows in batches of {args.batch}, sink and COPY "
              "alternating…", file=sys.stderr)
        sink_s, copy_s = await _interleaved(dsn, conn, sink_t, copy_t, batches)
        before = await _fingerprint(conn, sink_t)
        copied = await _fingerprint(conn, copy_t)
        print("pg-sink: replaying 10% through the sink…", file=sys.stderr)
        sink = await _open_sink(dsn, sink_t)
        replay = recs[: max(1, args.rows // 10)]
        t0 = time.perf_counter()
        for b in _chunks(replay, args.batch):
            await sink.write(b)
            await sink.flush()
        replay_s = time.perf_counter() - t0
        await sink.stop()
        after = await _fingerprint(conn, sink_t)
    finally:
        for t in (sink_t, copy_t):
            await conn.execute(f"DROP TABLE IF EXISTS {t}")
        await conn.close()
    sink_rps, copy_rps = args.rows / sink_s, args.rows / copy_s
    ratio = sink_rps / copy_rps
    unchanged = before[0] == after[0] == args.rows
    # Nothing lost or duplicated: the sink's rows before the replay, and COPY's (the
    # baseline), each exactly the rows written (the primary key rules out duplicate keys);
    # the replay moved neither the count nor the contents.
    complete = before[0] == copied[0] == args.rows and before[1] == after[1]
    return {
        "rows": args.rows,
        "batch": args.batch,
        "sink_rows_per_s": round(sink_rps),
        "copy_rows_per_s": round(copy_rps),
        "ratio": round(ratio, 3),
        "replay_rows_per_s": round(len(replay) / replay_s),  # every key exists: all upserts
        "replay_rowcount_unchanged": unchanged,
        "replay_contents_unchanged": before[1] == after[1],
        "sink_rows_match_copy_rows": before[0] == copied[0],
        "sink_rows_before_replay": before[0], "copy_rows": copied[0],
        "target": "ratio >= 0.5 with replay_rowcount_unchanged true, and nothing lost or "
                  "duplicated: the sink and COPY each hold exactly the rows written, and the "
                  "replay leaves the contents unchanged",
        "met": ratio >= 0.5 and unchanged and complete,
    }
