"""The ``sqlite`` connector: an incremental table poller and an idempotent upserting sink.

Both use aiosqlite (a core dependency), so nothing extra is needed. The sink creates its table
from the first batch and upserts by record key, so redelivery rewrites rows instead of adding
them; the source reads in cursor order and persists its position only at ``ack``.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import aiosqlite
import orjson
from pydantic import BaseModel, ConfigDict, Field

from streamflow.connectors import (
    ConnectorContext,
    ConnectorError,
    SinkRecord,
    SourceBatch,
    SourceRecord,
    write_atomic,
)

from ._codecs import quote_ident

T = TypeVar("T")
META = ("_key", "_arrival_id", "_partition")


_q = quote_ident  # table and column names come from config and from record fields


def _sql_type(value: object) -> str:
    if isinstance(value, bool | int):
        return "INTEGER"
    if isinstance(value, float):
        return "REAL"
    return "TEXT"  # str, and dict/list stored as JSON text; None gives TEXT until seen


def _to_sql(value: object) -> object:
    if isinstance(value, dict | list):
        return orjson.dumps(value).decode()
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int) and not -(2**63) <= value < 2**63:
        return str(value)  # SQLite integers are 64-bit
    return value


async def _retrying(what: str, attempts: int, op: Callable[[], Awaitable[T]]) -> T:
    """Retry a locked/busy database with exponential backoff, then raise naming ``what``."""
    delay = 0.05
    for attempt in range(1, attempts + 1):
        try:
            return await op()
        except sqlite3.OperationalError as e:
            transient = "locked" in str(e) or "busy" in str(e)
            if not transient or attempt == attempts:
                raise ConnectorError(f"{what} failed after {attempt} attempt(s): {e}") from e
            await asyncio.sleep(delay)
            delay = min(delay * 2, 2.0)
    raise AssertionError("unreachable")


async def _connect(path: Path) -> aiosqlite.Connection:
    db = await aiosqlite.connect(path, isolation_level=None)  # explicit BEGIN/COMMIT below
    await db.execute("PRAGMA busy_timeout = 5000")
    return db


class SqliteSinkConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    path: Path = Field(description="SQLite database file (created, in WAL mode)")
    table: str = Field(min_length=1, description="table to upsert into (created from 1st batch)")
    batch_size: int = Field(500, ge=1, description="rows per transaction; write() blocks when full")
    retries: int = Field(5, ge=1, description="attempts on a locked database before failing")


class SqliteSink:
    """Upserts rows keyed by ``_key`` (record key, else arrival id) into one table.

    Columns are inferred from the first values seen (INTEGER, REAL, TEXT; objects and lists as
    JSON text); a field first seen later is added with ALTER TABLE. A redelivered record hits
    the same ``_key`` and is updated in place, so replays never add rows.
    """

    def __init__(self, config: SqliteSinkConfig) -> None:
        self.cfg = config
        self.location = f"sqlite:{config.path}#{config.table}"
        self.trace_attributes = {  # the write span's attributes (OpenTelemetry db conventions)
            "db.system.name": "sqlite", "db.namespace": str(config.path),
            "db.collection.name": config.table, "db.operation.name": "upsert",
        }
        self._db: aiosqlite.Connection | None = None
        self._columns: list[str] = []
        self._buffer: list[SinkRecord] = []

    async def setup(self, ctx: ConnectorContext) -> None:
        self.cfg.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = await _connect(self.cfg.path)
        await self._db.execute("PRAGMA journal_mode = WAL")
        await self._db.execute("PRAGMA synchronous = FULL")  # flush() must be durable
        self._columns = await self._existing_columns()

    async def _existing_columns(self) -> list[str]:
        assert self._db is not None
        async with self._db.execute(f"PRAGMA table_info({_q(self.cfg.table)})") as cur:
            return [str(row[1]) for row in await cur.fetchall()]

    async def write(self, records: Sequence[SinkRecord]) -> None:
        for r in records:
            self._buffer.append(r)
            if len(self._buffer) >= self.cfg.batch_size:
                await self._write_buffer()  # backpressure: the caller waits for the database

    async def flush(self) -> None:
        await self._write_buffer()

    async def _write_buffer(self) -> None:
        if not self._buffer:
            return
        batch, self._buffer = self._buffer, []
        await _retrying(f"sqlite sink: upsert into {self.location}", self.cfg.retries,
                        lambda: self._upsert(batch))

    @staticmethod
    def _types(batch: list[SinkRecord]) -> dict[str, str]:
        """Each field's column type, from its first non-null value in the batch."""
        fields: dict[str, str | None] = {}
        for r in batch:
            for k, v in r.value.items():
                if k not in META and fields.get(k) is None:
                    fields[k] = None if v is None else _sql_type(v)
        return {k: t or "TEXT" for k, t in fields.items()}

    async def _upsert(self, batch: list[SinkRecord]) -> None:
        db = self._db
        assert db is not None, "setup() first"
        types = self._types(batch)
        table = _q(self.cfg.table)
        await db.execute("BEGIN IMMEDIATE")
        try:
            if not self._columns:
                body = "".join(f", {_q(c)} {t}" for c, t in types.items())
                await db.execute(
                    f"CREATE TABLE IF NOT EXISTS {table} (_key TEXT PRIMARY KEY, "
                    f"_arrival_id TEXT NOT NULL, _partition TEXT{body})")
                self._columns = [*META, *types]
            for c, t in types.items():
                if c not in self._columns:
                    await db.execute(f"ALTER TABLE {table} ADD COLUMN {_q(c)} {t}")
                    self._columns.append(c)
            # Every column is set, so a replayed or updated record replaces the whole row.
            data = [c for c in self._columns if c not in META]
            cols = [*META, *data]
            rows = [(r.key or r.arrival_id, r.arrival_id, r.partition,
                     *(_to_sql(r.value.get(c)) for c in data)) for r in batch]
            names = ", ".join(_q(c) for c in cols)
            updates = ", ".join(f"{_q(c)} = excluded.{_q(c)}" for c in cols[1:])
            await db.executemany(
                f"INSERT INTO {table} ({names}) VALUES ({', '.join('?' * len(cols))}) "
                f"ON CONFLICT(_key) DO UPDATE SET {updates}", rows)
            await db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                await db.execute("ROLLBACK")
            self._columns = await self._existing_columns()
            raise

    async def stop(self) -> None:
        if self._db is not None:
            try:
                await self.flush()
            finally:
                await self._db.close()
                self._db = None


class SqliteSourceConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    path: Path = Field(description="SQLite database file to read (must exist)")
    table: str = Field(min_length=1, description="table to poll")
    cursor_column: str = Field(min_length=1, description="non-decreasing column to read in order")
    batch_size: int = Field(500, ge=1, description="rows per batch (one ack each)")
    poll_interval_s: float = Field(1.0, gt=0, description="pause between polls when caught up")
    follow: bool = Field(False, description="keep polling for new rows instead of ending")


class SqliteSource:
    """Reads rows in (cursor, rowid) order from where the last acked batch ended.

    The position (last cursor value and rowid) is saved at ``ack`` under ``ctx.state_dir``, so
    a restart resumes after the acknowledged rows; a batch yielded but not acked is read again
    with the same record ids. Rows whose cursor is NULL are never read. When the table's
    cursor goes backwards (its maximum falls below the stored position, or a row inserted
    since the source last caught up carries a smaller value) the source stops with an error
    instead of silently skipping rows.
    """

    def __init__(self, config: SqliteSourceConfig) -> None:
        self.cfg = config
        self._db: aiosqlite.Connection | None = None
        self._state: Path | None = None
        self._pos: dict[str, Any] = {}
        self._stopping = False

    async def setup(self, ctx: ConnectorContext) -> None:
        if not self.cfg.path.is_file():
            raise ConnectorError(f"sqlite source {ctx.name!r}: no database file {self.cfg.path}")
        self._state = Path(ctx.state_dir) / f"sqlite-source-{ctx.name}.json"
        if self._state.exists():
            self._pos = orjson.loads(self._state.read_bytes())
        self._db = await _connect(self.cfg.path)
        async with self._db.execute(f"PRAGMA table_info({_q(self.cfg.table)})") as cur:
            cols = [str(r[1]) for r in await cur.fetchall()]
        if not cols:
            raise ConnectorError(
                f"sqlite source {ctx.name!r}: no table {self.cfg.table!r} in {self.cfg.path}")
        try:
            await self._db.execute(f"SELECT rowid FROM {_q(self.cfg.table)} LIMIT 0")
        except sqlite3.OperationalError as e:
            raise ConnectorError(
                f"sqlite source {ctx.name!r}: table {self.cfg.table!r} has no rowid ({e}); "
                "WITHOUT ROWID tables are not supported") from e
        if self.cfg.cursor_column not in cols:
            raise ConnectorError(
                f"sqlite source {ctx.name!r}: table {self.cfg.table!r} has no column "
                f"{self.cfg.cursor_column!r} (columns: {', '.join(cols)})")

    async def read(self) -> AsyncIterator[SourceBatch]:
        while not self._stopping:
            rows, pos = await self._poll()
            if rows:
                yield self._batch(rows, pos)
            if len(rows) < self.cfg.batch_size:  # caught up
                if not self.cfg.follow:
                    return
                await asyncio.sleep(self.cfg.poll_interval_s)

    async def _poll(self) -> tuple[list[tuple[int, dict[str, Any]]], dict[str, Any]]:
        """One snapshot: check the cursor has not gone backwards, then read the next rows."""
        db = self._db
        assert db is not None, "setup() first"
        t, c = _q(self.cfg.table), _q(self.cfg.cursor_column)
        pos = dict(self._pos)
        await db.execute("BEGIN")
        try:
            if "cursor" in pos:
                await self._check_backwards(db, pos)
                where = f"WHERE {c} > :c OR ({c} = :c AND rowid > :r)"
            else:
                where = f"WHERE {c} IS NOT NULL"
            async with db.execute(
                f"SELECT rowid AS _sf_rowid, * FROM {t} {where} ORDER BY {c}, rowid LIMIT :n",
                {"c": pos.get("cursor"), "r": pos.get("rowid"), "n": self.cfg.batch_size},
            ) as cur:
                names = [d[0] for d in cur.description]
                raw = await cur.fetchall()
            rows = [(int(r[0]), dict(zip(names[1:], r[1:], strict=True))) for r in raw]
            if rows:
                pos["cursor"] = rows[-1][1][self.cfg.cursor_column]
                pos["rowid"] = rows[-1][0]
            if len(rows) < self.cfg.batch_size and "cursor" in pos:
                async with db.execute(f"SELECT MAX(rowid) FROM {t}") as cur:
                    top = await cur.fetchone()
                high = top[0] if top is not None and top[0] is not None else 0
                pos["watermark"] = max(int(high), int(pos.get("watermark", 0)))
                pos["caught_cursor"] = pos["cursor"]
        finally:
            await db.execute("COMMIT")
        return rows, pos

    async def _check_backwards(self, db: aiosqlite.Connection, pos: dict[str, Any]) -> None:
        t, c = _q(self.cfg.table), _q(self.cfg.cursor_column)
        async with db.execute(f"SELECT MAX({c}), MAX({c}) < ? FROM {t}", (pos["cursor"],)) as cur:
            top = await cur.fetchone()
        seen: object = None
        if top is not None and top[1]:
            seen = top[0]
            how = "the table's largest value is now"
        elif "watermark" in pos:
            async with db.execute(
                f"SELECT {c}, rowid FROM {t} WHERE rowid > ? AND {c} < ? ORDER BY rowid LIMIT 1",
                (pos["watermark"], pos["caught_cursor"]),
            ) as cur:
                late = await cur.fetchone()
            if late is not None:
                seen = late[0]
                how = f"a row inserted since (rowid {late[1]}) has"
        if seen is not None:
            raise ConnectorError(
                f"sqlite source: cursor column {self.cfg.cursor_column!r} of table "
                f"{self.cfg.table!r} in {self.cfg.path} went backwards: stored position is "
                f"{pos['cursor']!r} (rowid {pos['rowid']}) but {how} {seen!r}. Rows below "
                f"the stored position would be skipped; fix the data, or delete "
                f"{self._state} to re-read the table from the start.")

    def _batch(self, rows: list[tuple[int, dict[str, Any]]], pos: dict[str, Any]) -> SourceBatch:
        out: list[SourceRecord] = []
        for rowid, row in rows:
            data = {k: _jsonable(v) for k, v in row.items()}
            body = orjson.dumps(data, option=orjson.OPT_SORT_KEYS)
            digest = hashlib.blake2b(body, digest_size=8).hexdigest()
            cursor = data[self.cfg.cursor_column]
            origin = {"table": self.cfg.table, "rowid": rowid, self.cfg.cursor_column: cursor}
            out.append(SourceRecord(data, origin, f"{self.cfg.table}:{rowid}:{cursor}:{digest}"))
        self._pos = pos  # read-ahead position; durable only at ack
        return SourceBatch(out, position=orjson.dumps(pos).decode())

    async def ack(self, batch: SourceBatch) -> None:
        assert self._state is not None, "setup() first"
        await asyncio.to_thread(write_atomic, self._state, batch.position.encode())

    async def stop(self) -> None:
        self._stopping = True
        if self._db is not None:
            await self._db.close()
            self._db = None


def _jsonable(value: object) -> object:
    if isinstance(value, bytes):
        return base64.b64encode(value).decode()
    return value
