"""The ``postgres`` connector: an incremental table poller and an idempotent upsert sink.

asyncpg (the ``postgres`` extra) is imported on first use, so this module imports without it.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import importlib
import logging
import re
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

import orjson
from pydantic import BaseModel, ConfigDict, Field

from ._api import ConnectorContext, ConnectorSpec, SinkRecord, SourceBatch, SourceRecord
from ._registry import ConnectorError
from ._sql import (
    BOOL,
    FLOAT,
    INT,
    JSON,
    PG_TYPES,
    TEXT,
    BadValue,
    Codec,
    encode_column,
    encode_columns,
    infer_column_types,
    json_safe,
    quote_ident,
    read_state,
    write_state,
)

log = logging.getLogger("streamflow.connectors.postgres")
T = TypeVar("T")


class PostgresUnavailable(ConnectionError):
    """The database stayed unreachable through every retry."""


class PostgresSinkError(RuntimeError):
    """A batch the database refused for a reason retrying cannot fix (schema, data)."""


def _asyncpg() -> Any:
    try:
        return importlib.import_module("asyncpg")
    except ImportError as e:
        raise ConnectorError(
            f"the postgres connector needs asyncpg: pip install 'streamflow[postgres]' ({e})"
        ) from e


def endpoint(dsn: str) -> str:
    """``host:port/db`` of a DSN (URL or libpq keywords), never its credentials."""
    if "://" in dsn:
        u = urlsplit(dsn)
        return f"{u.hostname or 'localhost'}:{u.port or 5432}{u.path or ''}"
    kv = dict(re.findall(r"(\w+)\s*=\s*(\S+)", dsn))
    return f"{kv.get('host', 'localhost')}:{kv.get('port', 5432)}/{kv.get('dbname', '')}"


def _table_ref(table: str) -> str:
    """``schema.table`` or ``table`` as a quoted SQL reference."""
    schema, _, name = table.rpartition(".")
    return f"{quote_ident(schema)}.{quote_ident(name)}" if schema else quote_ident(name)


def _transient(e: BaseException) -> bool:
    if isinstance(e, OSError | TimeoutError):  # refused, reset, DNS, connect timeout
        return True
    mod = type(e).__module__
    if not mod.startswith("asyncpg"):
        return False
    ex = importlib.import_module("asyncpg.exceptions")
    if isinstance(e, ex.InterfaceError):  # only "connection is closed", not misuse
        return "closed" in str(e)
    return isinstance(e, ex.PostgresConnectionError | ex.CannotConnectNowError
                      | ex.AdminShutdownError | ex.TooManyConnectionsError
                      | ex.TransactionRollbackError)


async def _no_reset(conn: Any) -> None:
    """Pool release without asyncpg's RESET ALL round trip: the pool already rolls back an
    open transaction, and these connectors set no session state (no SET, LISTEN, locks)."""


class _Db:
    """A lazily created asyncpg pool and a retry loop: transient failures are retried with
    exponential backoff, then reported as :class:`PostgresUnavailable` naming the endpoint."""

    def __init__(self, dsn: str, who: str, pool_size: int, max_retries: int, backoff_s: float,
                 connect_timeout_s: float, decode_json: bool = False) -> None:
        self.dsn, self.who, self.where = dsn, who, endpoint(dsn)
        self.pool_size, self.max_retries, self.backoff_s = pool_size, max_retries, backoff_s
        self.connect_timeout_s, self.decode_json = connect_timeout_s, decode_json
        self.pool: Any = None

    async def _init(self, conn: Any) -> None:
        if self.decode_json:
            for t in ("json", "jsonb"):
                await conn.set_type_codec(t, schema="pg_catalog", decoder=orjson.loads,
                                          encoder=lambda v: orjson.dumps(v).decode())

    async def run(self, what: str, op: Callable[[Any], Awaitable[T]]) -> T:
        attempt = 0
        while True:
            try:
                if self.pool is None:
                    self.pool = await _asyncpg().create_pool(
                        self.dsn, min_size=1, max_size=self.pool_size,
                        timeout=self.connect_timeout_s, init=self._init, reset=_no_reset)
                async with self.pool.acquire(timeout=self.connect_timeout_s) as conn:
                    return await op(conn)
            except Exception as e:
                if not _transient(e):
                    raise
                if attempt >= self.max_retries:
                    raise PostgresUnavailable(
                        f"{self.who}: cannot {what}: PostgreSQL at {self.where} unreachable after "
                        f"{attempt + 1} attempt(s): {type(e).__name__}: {e}") from e
                delay = self.backoff_s * 2 ** attempt
                attempt += 1
                log.warning("%s: %s failed (%s: %s); retry %d/%d in %.2fs", self.who, what,
                            type(e).__name__, e, attempt, self.max_retries, delay)
                await asyncio.sleep(delay)

    async def close(self) -> None:
        pool, self.pool = self.pool, None
        if pool is not None:
            try:
                await asyncio.wait_for(pool.close(), 10)
            except Exception:  # a wedged connection must not hang shutdown
                pool.terminate()


class _Conn(BaseModel):
    dsn: str = Field(description="PostgreSQL URL, e.g. postgresql://user:pw@host:5432/db")
    table: str = Field(description="table name; `schema.table` to name its schema")
    max_retries: int = Field(5, ge=0, description="retries of a connection failure")
    retry_backoff_s: float = Field(0.2, ge=0, description="first retry delay; doubles each time")
    connect_timeout_s: float = Field(10.0, gt=0, description="connect/acquire timeout")


async def _columns(conn: Any, ref: str) -> dict[str, str] | None:
    """Column -> declared type of a table, or None if it does not exist."""
    rows = await conn.fetch(
        "SELECT a.attname, format_type(a.atttypid, a.atttypmod) FROM pg_attribute a "
        "WHERE a.attrelid = to_regclass($1) AND a.attnum > 0 AND NOT a.attisdropped "
        "ORDER BY a.attnum", ref)
    if not rows:
        exists = await conn.fetchval("SELECT to_regclass($1) IS NOT NULL", ref)
        return {} if exists else None
    return {r[0]: r[1] for r in rows}


# ---------------------------------------------------------------------------------------- source

class PostgresSourceConfig(_Conn):
    model_config = ConfigDict(extra="forbid")

    cursor_column: str = Field(description="column that only grows (serial id, updated_at)")
    key_column: str | None = Field(
        None, description="row identity; default: the table's primary key")
    batch_size: int = Field(1000, ge=1, description="rows per batch (one ack each)")
    poll_interval_s: float = Field(1.0, gt=0, description="delay between polls once caught up")
    follow: bool = Field(False, description="keep polling for new rows instead of ending")


class CursorWentBackwards(RuntimeError):
    pass


class PostgresSource:
    """Reads rows in (cursor, key) order past the last acknowledged position.

    The position is written to ``<state_dir>/postgres-<name>.json`` at ack, so a restart
    reads only rows it has not acknowledged. Rows whose cursor is NULL are never read.
    """

    def __init__(self, config: PostgresSourceConfig) -> None:
        self.cfg = config
        self.ref = _table_ref(config.table)
        self.db = _Db(config.dsn, f"postgres source ({config.table})", 2, config.max_retries,
                      config.retry_backoff_s, config.connect_timeout_s, decode_json=True)
        self.name = "postgres"
        self.state_file = Path(".")
        self.keys: list[str] = []
        self.order: list[str] = []
        self.ctype = "text"
        self.sql_first = self.sql_next = ""
        self.pos: dict[str, Any] | None = None  # {"cursor": text, "key": [text, ...]}

    async def setup(self, ctx: ConnectorContext) -> None:
        _asyncpg()
        self.name = ctx.name
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in ctx.name)
        self.state_file = Path(ctx.state_dir) / f"postgres-{safe}.json"
        state = read_state(self.state_file)
        if state is not None:
            mine = (self.cfg.table, self.cfg.cursor_column)
            if (state.get("table"), state.get("cursor_column")) != mine:
                raise ConnectorError(
                    f"postgres source {ctx.name!r}: {self.state_file} holds the position of "
                    f"{state.get('table')}.{state.get('cursor_column')}, not of "
                    f"{mine[0]}.{mine[1]}; delete it to read from the start")
            self.pos = {"cursor": state["cursor"], "key": state.get("key")}

    async def _prepare(self, conn: Any) -> None:
        """Check the table and its columns, then build the two paging queries."""
        cols = await _columns(conn, self.ref)
        where = f"table {self.cfg.table!r} at {self.db.where}"
        if cols is None:
            raise ConnectorError(f"postgres source {self.name!r}: {where} does not exist")
        if self.cfg.key_column is not None:
            keys = [self.cfg.key_column]
        else:
            keys = [r[0] for r in await conn.fetch(
                "SELECT a.attname FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid"
                " AND a.attnum = ANY(i.indkey) WHERE i.indrelid = to_regclass($1)"
                " AND i.indisprimary ORDER BY array_position(i.indkey::int2[], a.attnum)",
                self.ref)]
        cur = self.cfg.cursor_column
        for c in [cur, *keys]:
            if c not in cols:
                raise ConnectorError(f"postgres source {self.name!r}: {where} has no column "
                                     f"{c!r} (its columns: {', '.join(cols)})")
        self.keys = keys
        self.order = [cur] + [k for k in keys if k != cur]
        self.ctype = cols[cur]
        q = [quote_ident(c) for c in self.order]
        extra = ", ".join(f"{c}::text AS __sf_{i}" for i, c in enumerate(q))
        head = f"SELECT t.*, {extra} FROM {self.ref} t WHERE "
        if keys:  # exact paging on the unique (cursor, key) order
            n = len(q) + 1
            casts = [f"${i + 1}::text::{cols[c]}" for i, c in enumerate(self.order)]
            tail = f" ORDER BY {', '.join(q)} LIMIT ${n}"
            self.sql_first = f"{head}{q[0]} IS NOT NULL{tail}".replace(f"${n}", "$1")
            self.sql_next = f"{head}({', '.join(q)}) > ({', '.join(casts)}){tail}"
            return
        # No row identity: page on the cursor alone, taking every row tied with the last one.
        after = f"{q[0]} > $1::text::{self.ctype}"
        for cond, lim in ((f"{q[0]} IS NOT NULL", "$1"), (after, "$2")):
            bound = (f"(SELECT {q[0]} FROM {self.ref} WHERE {cond} ORDER BY {q[0]} "
                     f"OFFSET {lim} - 1 LIMIT 1)")
            sql = f"{head}{cond} AND {q[0]} <= COALESCE({bound}, {q[0]}) ORDER BY {q[0]}"
            if lim == "$1":
                self.sql_first = sql
            else:
                self.sql_next = sql

    async def _fetch(self, conn: Any) -> list[Any]:
        if not self.order:
            await self._prepare(conn)
        if self.pos is None:
            return list(await conn.fetch(self.sql_first, self.cfg.batch_size))
        c = quote_ident(self.cfg.cursor_column)
        row = await conn.fetchrow(
            f"SELECT max({c}) < $1::text::{self.ctype}, max({c})::text FROM {self.ref}",
            self.pos["cursor"])
        if row[0]:
            raise CursorWentBackwards(
                f"postgres source {self.name!r}: cursor column {self.cfg.cursor_column!r} of "
                f"table {self.cfg.table!r} went backwards: the stored position is "
                f"{self.pos['cursor']!r} but the highest value in the table is {row[1]!r} "
                f"(rows deleted or the cursor rewound). Delete {self.state_file} to read the "
                "table from the start.")
        params = [self.pos["cursor"], *(self.pos["key"] or [])] if self.keys \
            else [self.pos["cursor"]]
        return list(await conn.fetch(self.sql_next, *params, self.cfg.batch_size))

    async def read(self) -> AsyncIterator[SourceBatch]:
        while True:
            rows = await self.db.run(f"read table {self.cfg.table!r}", self._fetch)
            if rows:
                yield self._batch(rows)
                continue
            if not self.cfg.follow:
                return
            await asyncio.sleep(self.cfg.poll_interval_s)

    def _batch(self, rows: list[Any]) -> SourceBatch:
        records: list[SourceRecord] = []
        table, cur = self.cfg.table, self.cfg.cursor_column
        for r in rows:
            data = {k: json_safe(v) for k, v in r.items() if not k.startswith("__sf_")}
            cursor = r["__sf_0"]
            origin: dict[str, Any] = {"table": table, cur: cursor}
            if self.keys:
                key = "/".join(str(data[k]) for k in self.keys)
                origin["key"] = key
                rid = f"{table}:{key}:{cursor}"
            else:  # the content tells rows with the same cursor apart
                digest = hashlib.blake2b(orjson.dumps(data, default=str), digest_size=8)
                rid = f"{table}:{cursor}:{digest.hexdigest()}"
            records.append(SourceRecord(data, origin, rid))
        last = rows[-1]
        pos = {"cursor": last["__sf_0"],
               "key": [last[f"__sf_{i}"] for i in range(1, len(self.order))]}
        self.pos = pos  # reading goes on from here; the durable position moves only at ack
        return SourceBatch(records, position=orjson.dumps(pos).decode())

    async def ack(self, batch: SourceBatch) -> None:
        pos = orjson.loads(batch.position)
        state = {"table": self.cfg.table, "cursor_column": self.cfg.cursor_column, **pos}
        await asyncio.to_thread(write_state, self.state_file, state)

    async def stop(self) -> None:
        await self.db.close()


# ------------------------------------------------------------------------------------------ sink

class PostgresSinkConfig(_Conn):
    model_config = ConfigDict(extra="forbid")

    key_column: str = Field("_key", description="primary-key column holding the record key")
    arrival_column: str = Field("_arrival_id", description="column holding the arrival id")
    columns: dict[str, str] | None = Field(
        None, description="column -> SQL type for a table the sink creates; "
                          "default: inferred from the first batch")
    batch_size: int = Field(1000, ge=1, description="rows buffered before write() flushes")
    pool_size: int = Field(2, ge=1, description="connections in the pool")


_CODECS: dict[str, Codec] = {}  # base type name -> how values travel in binary COPY
for _names, _codec in ((("text", "character varying", "character", "citext", "name"), TEXT),
                       (("smallint", "integer", "bigint"), INT),
                       (("double precision", "real"), FLOAT),
                       (("boolean",), BOOL), (("json", "jsonb"), JSON)):
    _CODECS.update(dict.fromkeys(_names, _codec))


class _Plan:
    """Statements and converters for one column set: COPY into a per-connection temp table,
    then one INSERT ... SELECT ... ON CONFLICT DO UPDATE into the target."""

    def __init__(self, ref: str, key: str, arrival: str | None, fields: list[str],
                 layout: dict[str, str]) -> None:
        self.fields, self.with_arrival = fields, arrival is not None
        self.cols = cols = [key, *([arrival] if arrival is not None else []), *fields]
        self.codecs: list[Codec] = []
        self.direct = True  # every column travels natively: COPY can target the table itself
        self.types = {c: layout[c] for c in cols}
        defs, sel = [], []
        for c in cols:
            ctype = layout[c]
            codec = _CODECS.get(ctype.split("(")[0])
            self.codecs.append(codec or TEXT)  # other types travel as text and are cast in SQL
            self.direct = self.direct and codec is not None
            defs.append(f"{quote_ident(c)} {ctype if codec else 'text'}")
            sel.append(quote_ident(c) + ("" if codec else f"::{ctype}"))
        sig = hashlib.blake2b(f"{ref}|{defs}".encode(), digest_size=6).hexdigest()
        self.tmp = f"_sf_stage_{sig}"
        self.create = (f"CREATE TEMP TABLE IF NOT EXISTS {self.tmp} ({', '.join(defs)}) "
                       "ON COMMIT DELETE ROWS")
        sets = ", ".join(f"{quote_ident(c)} = EXCLUDED.{quote_ident(c)}" for c in cols
                         if c != key)
        action = f"DO UPDATE SET {sets}" if sets else "DO NOTHING"
        self.append = (f"INSERT INTO {ref} ({', '.join(quote_ident(c) for c in cols)}) "
                       f"SELECT {', '.join(sel)} FROM pg_temp.{self.tmp}")
        self.upsert = f"{self.append} ON CONFLICT ({quote_ident(key)}) {action}"


UPSERT_STREAK = 32
"""Flushes that upsert straight away after one met existing keys, before appending again."""


class PostgresSink:
    """Upserts records by key, in batches, into a table it creates if missing.

    Each flush is one transaction: binary COPY of the rows into a temp table, then a single
    INSERT ... ON CONFLICT (key) DO UPDATE, so a redelivered record overwrites itself (while
    keys are new, a cheaper append gives the same result: see ``_write``). A new
    table gets ``<key_column> text PRIMARY KEY``, ``<arrival_column> text`` and one column per
    record field, typed by ``columns`` or inferred from the first batch (str text, int bigint,
    float double precision, bool boolean, object/array jsonb, always-null text).
    """

    def __init__(self, config: PostgresSinkConfig) -> None:
        self.cfg = config
        self.ref = _table_ref(config.table)
        schema, _, self.table_name = config.table.rpartition(".")
        self.schema = schema or None
        self.location = f"postgresql://{endpoint(config.dsn)}#{config.table}"
        host_port, _, dbname = endpoint(config.dsn).partition("/")
        host, _, port = host_port.rpartition(":")
        self.trace_attributes = {  # the write span's attributes (OpenTelemetry db conventions)
            "db.system.name": "postgresql", "db.namespace": dbname,
            "db.collection.name": config.table, "db.operation.name": "upsert",
            "server.address": host, "server.port": int(port) if port.isdigit() else 5432,
        }
        self.db = _Db(config.dsn, f"postgres sink ({config.table})", config.pool_size,
                      config.max_retries, config.retry_backoff_s, config.connect_timeout_s)
        self._buf: dict[str, SinkRecord] = {}
        self._lock = asyncio.Lock()
        self._layout: dict[str, str] | None = None
        self._plans: dict[tuple[str, ...], _Plan] = {}
        self._upsert_streak = 0

    async def setup(self, ctx: ConnectorContext) -> None:
        _asyncpg()  # fail fast without the extra; connecting waits for the first flush

    async def write(self, records: Sequence[SinkRecord]) -> None:
        for r in records:
            self._buf[r.key or r.arrival_id] = r  # last write of a key in a batch wins
            if len(self._buf) >= self.cfg.batch_size:
                await self.flush()  # backpressure: the caller waits while a full batch lands

    async def flush(self) -> None:
        async with self._lock:
            if not self._buf:
                return
            # Taken now either way: a batch that fails for good is dead-lettered by the engine.
            records, self._buf = list(self._buf.values()), {}
            first = records[0].value.keys()
            fields = list(first) if all(r.value.keys() == first for r in records) \
                else list(dict.fromkeys(f for r in records for f in r.value))
            meta = (self.cfg.key_column, self.cfg.arrival_column)
            fields = [f for f in fields if f not in meta]

            async def write(conn: Any) -> None:
                layout = await self._ensure_table(conn, records, fields)
                plan = self._plan(layout, fields)
                await self._write(conn, plan, self._rows(plan, records))

            try:
                await self.db.run(f"write {len(records)} rows to table {self.cfg.table!r}",
                                  write)
            except (PostgresUnavailable, PostgresSinkError, ConnectorError):
                raise
            except Exception as e:
                raise PostgresSinkError(
                    f"postgres sink: writing {len(records)} rows to table {self.cfg.table!r} at "
                    f"{self.db.where} failed: {type(e).__name__}: {e}") from e

    async def _write(self, conn: Any, plan: _Plan, rows: list[tuple[Any, ...]]) -> None:
        """Append if every key is new, else upsert; the table ends up the same either way.

        Keys are usually new, and appending (a binary COPY straight into the table, or a plain
        INSERT from the stage when a column needs an SQL cast) costs a fraction of
        ON CONFLICT DO UPDATE's speculative insertion. A duplicate key aborts the append
        atomically; the batch is then upserted, and so are the next flushes for a while.
        """
        if self._upsert_streak == 0:
            try:
                if plan.direct:
                    await conn.copy_records_to_table(
                        self.table_name, schema_name=self.schema, records=rows, columns=plan.cols)
                else:
                    await self._staged(conn, plan, rows, plan.append)
                return
            except importlib.import_module("asyncpg.exceptions").UniqueViolationError:
                self._upsert_streak = UPSERT_STREAK
        else:
            self._upsert_streak -= 1
        await self._staged(conn, plan, rows, plan.upsert)

    async def _staged(self, conn: Any, plan: _Plan, rows: list[tuple[Any, ...]],
                      insert: str) -> None:
        """One transaction, three round trips: BEGIN + temp table, COPY, INSERT + COMMIT."""
        await conn.execute(f"BEGIN; {plan.create}")
        try:
            await conn.copy_records_to_table(plan.tmp, records=rows, columns=plan.cols,
                                             schema_name="pg_temp")
            await conn.execute(f"{insert}; COMMIT")
        except BaseException:
            if not conn.is_closed() and conn.is_in_transaction():
                with contextlib.suppress(Exception):
                    await conn.execute("ROLLBACK")
            raise

    def _plan(self, layout: dict[str, str], fields: list[str]) -> _Plan:
        arrival = self.cfg.arrival_column if self.cfg.arrival_column in layout else None
        plan = self._plans.get(tuple(fields))
        if plan is None:
            plan = _Plan(self.ref, self.cfg.key_column, arrival, fields, layout)
            self._plans[tuple(fields)] = plan
        return plan

    def _rows(self, plan: _Plan, records: list[SinkRecord]) -> list[tuple[Any, ...]]:
        n_meta = len(plan.cols) - len(plan.fields)
        try:
            cols = [encode_column(plan.cols[0], [r.key or r.arrival_id for r in records],
                                  plan.codecs[0])]
            if plan.with_arrival:
                cols.append([r.arrival_id for r in records])
            cols += encode_columns([r.value for r in records], plan.fields,
                                   plan.codecs[n_meta:])
        except BadValue as e:
            r = records[e.index]
            raise PostgresSinkError(
                f"postgres sink: table {self.cfg.table!r}: column {e.column!r} "
                f"({plan.types[e.column]}) cannot hold {e.value!r} "
                f"(record key {r.key or r.arrival_id!r}): {e}") from e
        return list(zip(*cols, strict=True))

    async def _ensure_table(self, conn: Any, records: list[SinkRecord],
                            fields: list[str]) -> dict[str, str]:
        """The table's columns, creating it if missing; unknown fields are a clear error."""
        layout = self._layout
        if layout is None or any(f not in layout for f in fields):
            layout = await _columns(conn, self.ref)
            if layout is None:
                await self._create(conn, records, fields)
                layout = await _columns(conn, self.ref) or {}
            await self._check_key(conn, layout)
            self._layout, self._plans = layout, {}
        missing = [f for f in fields if f not in layout]
        if missing:
            raise PostgresSinkError(
                f"postgres sink: table {self.cfg.table!r} at {self.db.where} has no column(s) "
                f"{', '.join(missing)} for the record field(s) of that name; add them "
                f"(ALTER TABLE) or drop the table so the sink recreates it")
        return layout

    async def _create(self, conn: Any, records: list[SinkRecord], fields: list[str]) -> None:
        types = dict(self.cfg.columns) if self.cfg.columns is not None else \
            infer_column_types(({f: r.value.get(f) for f in fields} for r in records), PG_TYPES)
        for meta in (self.cfg.key_column, self.cfg.arrival_column):
            types.pop(meta, None)
        cols = [f"{quote_ident(self.cfg.key_column)} text PRIMARY KEY",
                f"{quote_ident(self.cfg.arrival_column)} text"]
        cols += [f"{quote_ident(c)} {t}" for c, t in types.items()]
        ex = importlib.import_module("asyncpg.exceptions")
        with contextlib.suppress(ex.DuplicateTableError, ex.UniqueViolationError):  # a race
            await conn.execute(f"CREATE TABLE IF NOT EXISTS {self.ref} ({', '.join(cols)})")
        log.info("postgres sink: created table %s at %s", self.cfg.table, self.db.where)

    async def _check_key(self, conn: Any, layout: dict[str, str]) -> None:
        k = self.cfg.key_column
        unique = k in layout and await conn.fetchval(
            "SELECT EXISTS (SELECT 1 FROM pg_index i JOIN pg_attribute a "
            "ON a.attrelid = i.indrelid AND a.attnum = i.indkey[0] "
            "WHERE i.indrelid = to_regclass($1) AND i.indisunique AND i.indnkeyatts = 1 "
            "AND i.indpred IS NULL AND a.attname = $2)", self.ref, k)
        if not unique:
            raise PostgresSinkError(
                f"postgres sink: table {self.cfg.table!r} at {self.db.where} needs a primary "
                f"key (or unique index) on its key column {k!r} for idempotent upserts; "
                f"its columns: {', '.join(layout) or 'none'}")

    async def stop(self) -> None:
        try:
            await self.flush()
        finally:
            await self.db.close()


POSTGRES = ConnectorSpec(
    name="postgres",
    source=PostgresSource,
    sink=PostgresSink,
    source_config=PostgresSourceConfig,
    sink_config=PostgresSinkConfig,
    extra="postgres",
)
