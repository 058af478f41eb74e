"""The postgres connector against the real PostgreSQL: upserts, polling, resume, failures."""

from __future__ import annotations

import datetime as dt
import logging
import os
import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import asyncpg  # type: ignore[import-untyped]
import orjson
import pytest
from pydantic import BaseModel
from streamflow_connector_sql import (
    CursorWentBackwards,
    PostgresSinkError,
    PostgresSource,
)

from streamflow import Asset, Pipeline, Settings, run_pipeline
from streamflow.connectors import ConnectorContext, SinkRecord, build_sink, build_source
from tests.helpers import read_topic, values
from tests.pipelines.echo import Person


@pytest.fixture(scope="session")
def pg_dsn(postgres_dsn: str) -> str:
    return postgres_dsn  # the shared fixture of tests/plugin.py


@pytest.fixture
async def db(pg_dsn: str) -> AsyncIterator[Any]:
    conn = await asyncpg.connect(pg_dsn)
    yield conn
    await conn.close()


@pytest.fixture
async def table(db: Any) -> AsyncIterator[str]:
    name = "t_" + uuid.uuid4().hex[:12]
    yield name
    await db.execute(f"DROP TABLE IF EXISTS {name}")


def _ctx(tmp_path: Path, name: str = "pg") -> ConnectorContext:
    return ConnectorContext(name=name, asset="rows", state_dir=str(tmp_path / "state"))


def _aged(path: Path, body: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(body)
    os.utime(path, (time.time() - 5, time.time() - 5))


# ------------------------------------------------------------------------------------------ sink

async def test_sink_creates_table_upserts_and_absorbs_redelivery(
    pg_dsn: str, db: Any, table: str, tmp_path: Path
) -> None:
    sink = build_sink("postgres", {"dsn": pg_dsn, "table": table})
    await sink.setup(_ctx(tmp_path))
    assert sink.location.endswith(f"127.0.0.1:5432/streamflow#{table}")
    recs = [SinkRecord(str(i), f"a{i}", "p", {"id": i, "name": f"n{i}", "amount": i * 1.5,
                                             "paid": i % 2 == 0, "tags": {"t": [i]},
                                             "note": None})
            for i in range(1, 6)]
    keyless = SinkRecord(None, "arrival-x", "p", {"id": 99, "name": "nokey", "amount": 0.5,
                                                  "paid": False, "tags": [], "note": "n"})
    await sink.write([*recs, keyless])
    await sink.flush()

    types = dict(await db.fetch(
        "SELECT column_name, data_type FROM information_schema.columns WHERE table_name = $1",
        table))
    assert types == {"_key": "text", "_arrival_id": "text", "id": "bigint", "name": "text",
                     "amount": "double precision", "paid": "boolean", "tags": "jsonb",
                     "note": "text"}
    pk = await db.fetchval(
        "SELECT a.attname FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid "
        "AND a.attnum = i.indkey[0] WHERE i.indrelid = $1::regclass AND i.indisprimary", table)
    assert pk == "_key"
    snapshot = await db.fetch(f"SELECT * FROM {table} ORDER BY _key")
    assert len(snapshot) == 6
    assert (await db.fetchrow(f"SELECT * FROM {table} WHERE _key = 'arrival-x'"))["name"] == "nokey"

    # Redelivery of every record (twice, and within one batch): nothing moves.
    for _ in range(2):
        await sink.write([*recs, keyless, recs[0]])
        await sink.flush()
    assert await db.fetch(f"SELECT * FROM {table} ORDER BY _key") == snapshot

    # A newer version of a key replaces its row; a new key adds one.
    await sink.write([SinkRecord("2", "a2v2", "p", {**recs[1].value, "name": "changed"}),
                      SinkRecord("6", "a6", "p", {**recs[0].value, "id": 6})])
    await sink.stop()
    rows = {r["_key"]: r for r in await db.fetch(f"SELECT * FROM {table}")}
    assert len(rows) == 7
    assert (rows["2"]["name"], rows["2"]["_arrival_id"]) == ("changed", "a2v2")
    assert orjson.loads(rows["1"]["tags"]) == {"t": [1]}


async def test_sink_casts_declared_column_types_and_stays_idempotent(
    pg_dsn: str, db: Any, table: str, tmp_path: Path
) -> None:
    cfg = {"dsn": pg_dsn, "table": table, "batch_size": 2,
           "columns": {"day": "date", "amount": "numeric(10,2)", "at": "timestamptz"}}
    recs = [SinkRecord(f"k{i}", f"a{i}", "p", {"day": f"2026-01-0{i}", "amount": f"{i}.25",
                                               "at": f"2026-01-0{i}T10:00:00Z"})
            for i in range(1, 6)]
    for _ in range(2):  # the second pass is a redelivery by a fresh sink (a restarted worker)
        sink = build_sink("postgres", cfg)
        await sink.setup(_ctx(tmp_path))
        await sink.write(recs)  # batch_size 2: write() itself flushes twice (backpressure)
        await sink.flush()
        await sink.stop()
    rows = await db.fetch(f"SELECT * FROM {table} ORDER BY _key")
    assert len(rows) == 5
    assert rows[0]["day"] == dt.date(2026, 1, 1) and rows[0]["amount"] == Decimal("1.25")
    assert rows[4]["at"] == dt.datetime(2026, 1, 5, 10, tzinfo=dt.UTC)


async def test_sink_names_what_is_wrong_with_a_table_or_a_value(
    pg_dsn: str, db: Any, table: str, tmp_path: Path
) -> None:
    await db.execute(f"CREATE TABLE {table} (_key text, name text)")  # no primary key
    sink = build_sink("postgres", {"dsn": pg_dsn, "table": table})
    await sink.setup(_ctx(tmp_path))
    await sink.write([SinkRecord("1", "a1", "p", {"name": "x"})])
    with pytest.raises(PostgresSinkError, match=f"{table}.*primary key.*'_key'"):
        await sink.flush()
    await db.execute(f"ALTER TABLE {table} ADD PRIMARY KEY (_key)")
    await sink.write([SinkRecord("1", "a1", "p", {"name": "x", "extra": 1})])
    with pytest.raises(PostgresSinkError, match=r"no column.*extra"):
        await sink.flush()
    await db.execute(f"ALTER TABLE {table} ADD COLUMN n bigint")
    await sink.write([SinkRecord("1", "a1", "p", {"name": "x", "n": "many"})])
    with pytest.raises(PostgresSinkError, match=r"column 'n' \(bigint\) cannot hold 'many'"):
        await sink.flush()
    await sink.stop()
    assert await db.fetchval(f"SELECT count(*) FROM {table}") == 0


class Shouted(BaseModel):
    id: int
    name: str
    length: int


async def test_pipeline_from_files_through_a_stage_into_postgres(
    settings: Settings, pg_dsn: str, db: Any, table: str, tmp_path: Path
) -> None:
    people = Asset("people", Person, key="id")
    shouted = Asset("shouted", Shouted, key="id")
    p = Pipeline("pg-sink")
    p.source("files", asset=people, path=tmp_path / "landing", format="jsonl", settle_s=0)

    @p.stage(inputs=[people], output=shouted)
    def shout(x: Person) -> Shouted:
        return Shouted(id=x.id, name=x.name.upper(), length=len(x.name))

    p.sink("postgres", asset=shouted, dsn=pg_dsn, table=table)
    rows = b"".join(b'{"id": %d, "name": "name%d"}\n' % (i, i) for i in range(50))
    _aged(tmp_path / "landing" / "a.jsonl", rows)
    summary = await run_pipeline(p, settings)
    assert (summary.records_in, summary.records_out, summary.dead_lettered) == (50, 50, 0)
    assert summary.outputs["postgres-shouted"].endswith(f"#{table}")

    # The same people land again in a new file: new arrivals, same keys, no new rows.
    _aged(tmp_path / "landing" / "b.jsonl", rows[: rows.index(b"\n") + 1] + rows)
    summary = await run_pipeline(p, settings)
    assert summary.records_out == 51
    got = await db.fetch(f"SELECT _key, id, name, length FROM {table} ORDER BY id")
    assert [tuple(r) for r in got] == [(str(i), i, f"NAME{i}", len(f"name{i}"))
                                       for i in range(50)]


async def test_unreachable_database_dead_letters_the_batch_after_retries(
    settings: Settings, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    people = Asset("people", Person, key="id")
    p = Pipeline("pg-down")
    p.source("files", asset=people, path=tmp_path / "landing", format="jsonl", settle_s=0)
    p.sink("postgres", asset=people, dsn="postgresql://u:secret@127.0.0.1:1/db", table="people",
           max_retries=2, retry_backoff_s=0.05, connect_timeout_s=2)
    _aged(tmp_path / "landing" / "a.jsonl",
          b"".join(b'{"id": %d, "name": "n%d"}\n' % (i, i) for i in range(7)))
    with caplog.at_level(logging.WARNING, logger="streamflow.connectors.postgres"):
        summary = await run_pipeline(p, settings)
    assert (summary.records_in, summary.records_out, summary.dead_lettered) == (7, 0, 7)
    assert summary.drained
    retries = [r.getMessage() for r in caplog.records if "retry" in r.getMessage()]
    assert any("retry 2/2" in m for m in retries), retries
    dead = values(await read_topic(settings, settings.dead_letter_topic))
    assert sorted(orjson.loads(str(d["payload"]))["id"] for d in dead) == list(range(7))
    for d in dead:
        reason = str(d["reason"])
        assert "127.0.0.1:1" in reason and "unreachable after 3 attempt(s)" in reason, reason
        assert "secret" not in reason
        assert d["error"]["type"] == "PostgresUnavailable"  # type: ignore[index]


# ---------------------------------------------------------------------------------------- source

class Order(BaseModel):
    id: int
    customer: str
    amount: Decimal
    updated: dt.datetime


async def _insert_orders(db: Any, table: str, ids: range, base: int = 0) -> None:
    await db.executemany(
        f"INSERT INTO {table} (id, customer, amount, updated) VALUES ($1, $2, $3, $4)",
        [(i, f"c{i}", Decimal(f"{i}.50"),
          dt.datetime(2026, 1, 1, tzinfo=dt.UTC) + dt.timedelta(minutes=base + i)) for i in ids])


def _source_pipeline(table: str, pg_dsn: str, out: str, **cfg: Any) -> Pipeline:
    orders = Asset("orders", Order, key="id")
    p = Pipeline("pg-source")
    p.source("postgres", asset=orders, dsn=pg_dsn, table=table, cursor_column="updated", **cfg)
    p.sink("postgres", asset=orders, name="orders-out", dsn=pg_dsn, table=out)
    return p


async def test_source_reads_incrementally_resumes_and_ends_when_caught_up(
    pg_dsn: str, db: Any, table: str, tmp_path: Path
) -> None:
    out = table + "_out"
    await db.execute(f"CREATE TABLE {table} (id bigint PRIMARY KEY, customer text, "
                     "amount numeric(10,2), updated timestamptz NOT NULL)")
    await _insert_orders(db, table, range(1, 8))
    settings = Settings(state_dir=tmp_path / "state", namespace="n" + uuid.uuid4().hex[:8])
    try:
        s1 = await run_pipeline(_source_pipeline(table, pg_dsn, out, batch_size=3), settings)
        assert (s1.records_in, s1.records_out, s1.dead_lettered) == (7, 7, 0)
        again = await run_pipeline(_source_pipeline(table, pg_dsn, out, batch_size=3), settings)
        assert again.records_in == 0, "a restart does not re-read acknowledged rows"

        await _insert_orders(db, table, range(8, 11))
        await db.execute(f"UPDATE {table} SET customer = 'moved', updated = updated + "
                         "interval '1 day' WHERE id = 2")  # an update moves the row forward
        s2 = await run_pipeline(_source_pipeline(table, pg_dsn, out, batch_size=3), settings)
        assert s2.records_in == 4, "only the new and the updated rows"
        got = {r["id"]: r for r in await db.fetch(f"SELECT * FROM {out}")}
        assert sorted(got) == list(range(1, 11))
        assert got[2]["customer"] == "moved" and got[5]["amount"] == "5.50"
    finally:
        await db.execute(f"DROP TABLE IF EXISTS {out}")


async def test_source_rereads_an_unacknowledged_batch_with_the_same_ids(
    pg_dsn: str, db: Any, table: str, tmp_path: Path
) -> None:
    await db.execute(f"CREATE TABLE {table} (seq bigint, v text)")  # no key: cursor + content
    await db.executemany(f"INSERT INTO {table} VALUES ($1, $2)",
                         [(1, "a"), (2, "b"), (2, "c"), (3, "d")])
    cfg = {"dsn": pg_dsn, "table": table, "cursor_column": "seq", "batch_size": 2}

    async def first_batch() -> list[str]:
        src = build_source("postgres", cfg)
        await src.setup(_ctx(tmp_path))
        batch = await anext(aiter(src.read()))
        await src.stop()
        return [r.record_id for r in batch.records]

    ids = await first_batch()
    assert len(ids) == 3, "rows tied on the cursor stay in one batch"
    assert await first_batch() == ids, "not acknowledged: read again, same record ids"


async def test_source_refuses_a_cursor_that_went_backwards(
    pg_dsn: str, db: Any, table: str, tmp_path: Path
) -> None:
    await db.execute(f"CREATE TABLE {table} (id bigint PRIMARY KEY, seq bigint)")
    await db.executemany(f"INSERT INTO {table} VALUES ($1, $2)", [(i, i * 10) for i in range(5)])
    cfg = {"dsn": pg_dsn, "table": table, "cursor_column": "seq", "batch_size": 100}
    src = build_source("postgres", cfg)
    await src.setup(_ctx(tmp_path))
    async for batch in src.read():
        await src.ack(batch)
    await src.stop()

    await db.execute(f"DELETE FROM {table}")
    await db.execute(f"INSERT INTO {table} VALUES (7, 5)")  # rewound: 5 < stored 40
    src = build_source("postgres", cfg)
    assert isinstance(src, PostgresSource)
    await src.setup(_ctx(tmp_path))
    with pytest.raises(CursorWentBackwards) as err:
        async for _ in src.read():
            pass
    await src.stop()
    msg = str(err.value)
    assert table in msg and "'seq'" in msg and "'40'" in msg and "'5'" in msg, msg
    assert str(src.state_file) in msg


async def test_a_following_source_picks_up_rows_inserted_later(
    pg_dsn: str, db: Any, table: str, tmp_path: Path
) -> None:
    await db.execute(f"CREATE TABLE {table} (id bigserial PRIMARY KEY, v text)")
    await db.execute(f"INSERT INTO {table} (v) VALUES ('a'), ('b')")
    src = build_source("postgres", {"dsn": pg_dsn, "table": table, "cursor_column": "id",
                                    "follow": True, "poll_interval_s": 0.05})
    await src.setup(_ctx(tmp_path))
    reader = src.read()
    assert isinstance(reader, AsyncGenerator)
    first = await anext(reader)
    await src.ack(first)
    assert [r.data["v"] for r in first.records] == ["a", "b"]
    assert first.records[0].record_id == f"{table}:1:1"
    await db.execute(f"INSERT INTO {table} (v) VALUES ('c')")
    second = await anext(reader)
    assert [r.data["v"] for r in second.records] == ["c"]
    await reader.aclose()  # what the engine's cancellation amounts to
    await src.stop()
