"""The postgres source: an incremental table poller, its position persisted at ack."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
from pydantic import ConfigDict, Field

from streamflow.connectors import ConnectorContext, ConnectorError, SourceBatch, SourceRecord

from ._codecs import json_safe, quote_ident, read_state, write_state
from ._pg import ConnConfig, Db, asyncpg_module, table_columns, table_ref


class PostgresSourceConfig(ConnConfig):
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
        self.ref = table_ref(config.table)
        self.db = Db(config.dsn, f"postgres source ({config.table})", 2, config.max_retries,
                      config.retry_backoff_s, config.connect_timeout_s, decode_json=True,
                      security=config)
        self.name = "postgres"
        self.state_file = Path(".")
        self.keys: list[str] = []
        self.order: list[str] = []
        self.ctype = "text"
        self.sql_first = self.sql_next = ""
        self.pos: dict[str, Any] | None = None  # {"cursor": text, "key": [text, ...]}

    async def setup(self, ctx: ConnectorContext) -> None:
        asyncpg_module()
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
        cols = await table_columns(conn, self.ref)
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
