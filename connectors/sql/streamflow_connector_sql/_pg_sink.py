"""The postgres sink: idempotent batched upserts into a table it creates if missing."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import importlib
import logging
from collections.abc import Sequence
from typing import Any

from pydantic import ConfigDict, Field

from streamflow.connectors import ConnectorContext, ConnectorError, SinkRecord

from ._codecs import (
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
    quote_ident,
)
from ._pg import (
    ConnConfig,
    Db,
    PostgresSinkError,
    PostgresUnavailable,
    asyncpg_module,
    endpoint,
    table_columns,
    table_ref,
)

log = logging.getLogger("streamflow.connectors.postgres")


class PostgresSinkConfig(ConnConfig):
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
        self.ref = table_ref(config.table)
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
        self.db = Db(config.dsn, f"postgres sink ({config.table})", config.pool_size,
                      config.max_retries, config.retry_backoff_s, config.connect_timeout_s,
                      security=config)
        self._buf: dict[str, SinkRecord] = {}
        self._lock = asyncio.Lock()
        self._layout: dict[str, str] | None = None
        self._plans: dict[tuple[str, ...], _Plan] = {}
        self._upsert_streak = 0

    async def setup(self, ctx: ConnectorContext) -> None:
        asyncpg_module()  # fail fast without the extra; connecting waits for the first flush

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
            layout = await table_columns(conn, self.ref)
            if layout is None:
                await self._create(conn, records, fields)
                layout = await table_columns(conn, self.ref) or {}
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
