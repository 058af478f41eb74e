"""The sqlite connector against real database files: upserting sink, incremental source."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from pydantic import BaseModel

from streamflow import Asset, Pipeline, Settings, run_pipeline
from streamflow.connectors import (
    ConnectorContext,
    ConnectorError,
    SinkRecord,
    Source,
    SourceBatch,
    build_sink,
    build_source,
)


def _ctx(tmp_path: Path, name: str = "sqlite-events") -> ConnectorContext:
    return ConnectorContext(name, "events", str(tmp_path / "state"))


def _rows(db: Path, sql: str) -> list[tuple[object, ...]]:
    with sqlite3.connect(db) as con:
        return list(con.execute(sql))


def _events_db(path: Path, n: int, start: int = 1) -> None:
    with sqlite3.connect(path) as con:
        con.execute("CREATE TABLE IF NOT EXISTS events (seq INTEGER, name TEXT, payload BLOB)")
        con.executemany("INSERT INTO events VALUES (?, ?, ?)",
                        [(i, f"e{i}", b"\x00\x01") for i in range(start, start + n)])


async def _drain(src: Source, ack: bool = True) -> list[SourceBatch]:
    """Read a source to the end, acking each batch like the engine does."""
    out = []
    async for b in src.read():
        out.append(b)
        if ack:
            await src.ack(b)
    return out


# --- sink ---------------------------------------------------------------------------------

SINK_RECORDS = [
    SinkRecord("k1", "a1", "2026-11-01", {"n": 1, "x": 1.5, "ok": True, "s": "a", "tags": [1]}),
    SinkRecord("k2", "a2", "2026-11-01", {"n": 2, "x": 2.5, "ok": False, "s": None, "tags": []}),
    SinkRecord(None, "a3", "2026-11-02", {"n": 3, "x": None, "ok": True, "s": "c", "tags": None}),
]


async def test_sink_creates_typed_table_and_upserts_idempotently(tmp_path: Path) -> None:
    db = tmp_path / "out.db"
    sink = build_sink("sqlite", {"path": db, "table": "sales", "batch_size": 2})
    await sink.setup(_ctx(tmp_path))
    await sink.write(SINK_RECORDS)
    await sink.flush()
    await sink.write(SINK_RECORDS)  # redelivery: same keys, same rows
    await sink.flush()
    await sink.stop()

    assert sink.location == f"sqlite:{db}#sales"
    assert _rows(db, "PRAGMA journal_mode") == [("wal",)]
    cols = {r[1]: (r[2], r[5]) for r in _rows(db, "PRAGMA table_info(sales)")}
    assert cols == {"_key": ("TEXT", 1), "_arrival_id": ("TEXT", 0), "_partition": ("TEXT", 0),
                    "n": ("INTEGER", 0), "x": ("REAL", 0), "ok": ("INTEGER", 0),
                    "s": ("TEXT", 0), "tags": ("TEXT", 0)}
    assert _rows(db, "SELECT _key, _arrival_id, _partition, n, x, ok, s, tags FROM sales "
                     "ORDER BY n") == [
        ("k1", "a1", "2026-11-01", 1, 1.5, 1, "a", "[1]"),
        ("k2", "a2", "2026-11-01", 2, 2.5, 0, None, "[]"),
        ("a3", "a3", "2026-11-02", 3, None, 1, "c", None),
    ]


async def test_sink_updates_by_key_adds_new_columns_and_survives_restart(tmp_path: Path) -> None:
    db = tmp_path / "out.db"
    first = build_sink("sqlite", {"path": db, "table": "t"})
    await first.setup(_ctx(tmp_path))
    await first.write(SINK_RECORDS[:1])
    await first.flush()
    await first.stop()

    again = build_sink("sqlite", {"path": db, "table": "t"})  # a new run on the same table
    await again.setup(_ctx(tmp_path))
    await again.write([SinkRecord("k1", "b1", "2026-11-01", {"n": 10, "extra": {"a": 1}})])
    await again.flush()
    await again.stop()

    assert _rows(db, "SELECT _key, _arrival_id, n, x, extra FROM t") == [
        ("k1", "b1", 10, None, '{"a":1}')]


async def test_sink_names_the_table_when_the_database_is_unusable(tmp_path: Path) -> None:
    db = tmp_path / "out.db"
    with sqlite3.connect(db) as con:
        con.execute("CREATE TABLE t (_key TEXT PRIMARY KEY, _arrival_id TEXT, _partition TEXT, "
                    "n INTEGER CHECK (n > 0))")
    sink = build_sink("sqlite", {"path": db, "table": "t"})
    await sink.setup(_ctx(tmp_path))
    await sink.write([SinkRecord("k", "a", "p", {"n": -1})])
    with pytest.raises(sqlite3.IntegrityError, match="CHECK"):
        await sink.flush()
    await sink.write([SinkRecord("k", "a", "p", {"n": 1})])  # the next batch still works
    await sink.flush()
    await sink.stop()
    assert _rows(db, "SELECT _key, n FROM t") == [("k", 1)]


async def test_sink_retries_a_locked_database_then_succeeds(tmp_path: Path) -> None:
    db = tmp_path / "out.db"
    sink = build_sink("sqlite", {"path": db, "table": "t", "retries": 3})
    await sink.setup(_ctx(tmp_path))
    holder = sqlite3.connect(db, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")  # another writer holds the lock past busy_timeout (5 s)
    asyncio.get_running_loop().call_later(6.0, holder.rollback)
    await sink.write(SINK_RECORDS[:1])
    await sink.flush()
    holder.close()
    await sink.stop()
    assert _rows(db, "SELECT _key FROM t") == [("k1",)]


# --- source -------------------------------------------------------------------------------

def _source(db: Path, **extra: object) -> Source:
    return build_source("sqlite", {"path": db, "table": "events", "cursor_column": "seq",
                                   "batch_size": 4, **extra})


async def test_source_reads_in_cursor_order_and_resumes_after_restart(tmp_path: Path) -> None:
    db = tmp_path / "in.db"
    _events_db(db, 10)
    src = _source(db)
    await src.setup(_ctx(tmp_path))
    batches = await _drain(src)
    await src.stop()
    assert [len(b.records) for b in batches] == [4, 4, 2]
    recs = [r for b in batches for r in b.records]
    assert [r.data["seq"] for r in recs] == list(range(1, 11))
    assert recs[0].data == {"seq": 1, "name": "e1", "payload": "AAE="}  # BLOB as base64
    assert recs[0].origin == {"table": "events", "rowid": 1, "seq": 1}

    _events_db(db, 3, start=11)
    again = _source(db)
    await again.setup(_ctx(tmp_path))
    more = await _drain(again)
    await again.stop()
    assert [r.data["seq"] for b in more for r in b.records] == [11, 12, 13]


async def test_unacked_batch_is_read_again_with_the_same_ids(tmp_path: Path) -> None:
    db = tmp_path / "in.db"
    _events_db(db, 6)
    src = _source(db)
    await src.setup(_ctx(tmp_path))
    gen: AsyncIterator[SourceBatch] = src.read()
    first = await gen.__anext__()
    await src.ack(first)
    second = await gen.__anext__()  # "crash" before this one is acked
    await gen.aclose()  # type: ignore[attr-defined]  # an async generator in fact
    await src.stop()

    again = _source(db)
    await again.setup(_ctx(tmp_path))
    redo = await _drain(again)
    await again.stop()
    assert [r.record_id for r in redo[0].records] == [r.record_id for r in second.records]
    assert [r.data["seq"] for b in redo for r in b.records] == [5, 6]


async def test_ties_on_the_cursor_are_not_skipped_across_batches(tmp_path: Path) -> None:
    db = tmp_path / "in.db"
    with sqlite3.connect(db) as con:
        con.execute("CREATE TABLE events (seq TEXT, name TEXT)")
        con.executemany("INSERT INTO events VALUES (?, ?)",
                        [("2026-11-01", f"n{i}") for i in range(7)] + [("2026-11-02", "last")])
    src = _source(db, batch_size=3)
    await src.setup(_ctx(tmp_path))
    names = [r.data["name"] for b in await _drain(src) for r in b.records]
    await src.stop()
    assert names == [f"n{i}" for i in range(7)] + ["last"]


@pytest.mark.parametrize("how", ["truncated", "late-insert"])
async def test_cursor_going_backwards_is_a_clear_error(tmp_path: Path, how: str) -> None:
    db = tmp_path / "in.db"
    _events_db(db, 5, start=100)
    src = _source(db)
    await src.setup(_ctx(tmp_path))
    await _drain(src)
    await src.stop()
    with sqlite3.connect(db) as con:
        if how == "truncated":
            con.execute("DELETE FROM events")
            con.execute("INSERT INTO events VALUES (7, 'rewound', NULL)")
        else:
            con.execute("INSERT INTO events VALUES (42, 'late', NULL)")
            con.execute("INSERT INTO events VALUES (500, 'new', NULL)")

    again = _source(db)
    await again.setup(_ctx(tmp_path))
    with pytest.raises(ConnectorError) as err:
        await _drain(again)
    await again.stop()
    msg = str(err.value)
    seen = "7" if how == "truncated" else "42"
    assert "'seq'" in msg and "'events'" in msg and "went backwards" in msg
    assert "stored position is 104" in msg and msg.split("but")[1].rstrip(".").find(seen) > 0


async def test_follow_picks_up_new_rows(tmp_path: Path) -> None:
    db = tmp_path / "in.db"
    _events_db(db, 2)
    src = _source(db, follow=True, poll_interval_s=0.05)
    await src.setup(_ctx(tmp_path))
    gen: AsyncIterator[SourceBatch] = src.read()
    first = await asyncio.wait_for(gen.__anext__(), 30)
    await src.ack(first)
    _events_db(db, 1, start=3)
    second = await asyncio.wait_for(gen.__anext__(), 30)
    await gen.aclose()  # type: ignore[attr-defined]  # an async generator in fact
    await src.stop()
    assert [r.data["seq"] for r in second.records] == [3]


async def test_setup_names_missing_database_table_and_column(tmp_path: Path) -> None:
    db = tmp_path / "in.db"
    with pytest.raises(ConnectorError, match="no database file"):
        await _source(db).setup(_ctx(tmp_path))
    _events_db(db, 1)
    with pytest.raises(ConnectorError, match="no table 'nope'"):
        await build_source("sqlite", {"path": db, "table": "nope", "cursor_column": "seq"}
                           ).setup(_ctx(tmp_path))
    with pytest.raises(ConnectorError, match=r"no column 'ts'.*seq, name, payload"):
        await build_source("sqlite", {"path": db, "table": "events", "cursor_column": "ts"}
                           ).setup(_ctx(tmp_path))


# --- end to end ---------------------------------------------------------------------------

class Event(BaseModel):
    seq: int
    name: str


def _pipeline(src_db: Path, out_db: Path) -> Pipeline:
    events = Asset("events", Event, key="seq")
    loud = Asset("loud", Event, key="seq")
    p = Pipeline("sqlite-e2e")
    p.source("sqlite", asset=events, path=src_db, table="events", cursor_column="seq",
             batch_size=7)

    @p.stage(inputs=[events], output=loud)
    def shout(e: Event) -> Event:
        return Event(seq=e.seq, name=e.name.upper())

    p.sink("sqlite", asset=loud, path=out_db, table="loud", batch_size=5)
    return p


async def test_pipeline_sqlite_to_sqlite_resumes_and_never_duplicates(
    settings: Settings, tmp_path: Path
) -> None:
    src_db, out_db = tmp_path / "in.db", tmp_path / "out.db"
    _events_db(src_db, 20)
    first = await run_pipeline(_pipeline(src_db, out_db), settings)
    assert (first.records_in, first.records_out, first.dead_lettered) == (20, 20, 0)

    again = await run_pipeline(_pipeline(src_db, out_db), settings)
    assert again.records_in == 0, "the acked position survived the restart"

    _events_db(src_db, 5, start=21)
    third = await run_pipeline(_pipeline(src_db, out_db), settings)
    assert third.records_in == 5
    assert _rows(out_db, "SELECT seq, name FROM loud ORDER BY seq") == [
        (i, f"E{i}") for i in range(1, 26)]
