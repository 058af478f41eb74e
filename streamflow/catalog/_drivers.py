"""The two databases behind the catalog, reduced to what ``SqlCatalog`` needs: one
connection, transactions, statements with ``?`` placeholders.

SQLite is the default (one machine, a file under the state dir); PostgreSQL serves a fleet
(``catalog_url``). Both run the same SQL; what differs lives here.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import sqlite3
from collections.abc import AsyncIterator, Iterable, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import parse_qs, urlsplit

import aiosqlite

from streamflow.errors import ConfigError

Row = Sequence[Any]


class Tx(Protocol):
    """Statements inside one open transaction."""

    async def execute(self, sql: str, params: Row = ()) -> None: ...

    async def executemany(self, sql: str, rows: Iterable[Row]) -> None: ...

    async def fetch(self, sql: str, params: Row = ()) -> list[tuple[Any, ...]]: ...


class Driver(Protocol):
    """One database connection; ``transaction`` serializes writers (SQLite's write lock,
    PostgreSQL's row locks and an advisory lock for migrations)."""

    name: str
    ver_type: str
    """The column type of ``ver``: compared byte by byte."""

    async def connect(self) -> None: ...

    async def close(self) -> None: ...

    def transaction(self, exclusive: bool = False) -> AbstractAsyncContextManager[Tx]:
        """``exclusive``: also the migration lock."""
        ...

    async def fetch(self, sql: str, params: Row = ()) -> list[tuple[Any, ...]]:
        """A read outside any write transaction."""
        ...

    def retryable(self, error: BaseException) -> bool:
        """A transaction lost to another writer (a deadlock): run it again."""
        ...



class SqliteDriver:
    """A catalog file; a second projector on the same file waits for the write lock."""

    name = "sqlite"
    ver_type = "TEXT"

    def __init__(self, path: Path) -> None:
        self.path = path
        self._db: aiosqlite.Connection | None = None

    async def connect(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # Waits up to 30 s for another projector's write lock.
        db = await aiosqlite.connect(self.path, isolation_level=None, timeout=30)
        for attempt in range(100):
            try:  # a new file's switch to WAL does not wait for a second connection's
                await db.execute("PRAGMA journal_mode=WAL")
                break
            except sqlite3.OperationalError:
                if attempt == 99:
                    await db.close()
                    raise
                await asyncio.sleep(0.05)
        await db.execute("PRAGMA synchronous=NORMAL")  # WAL: a commit survives a crash
        self._db = db

    async def close(self) -> None:
        if self._db is not None:
            await self._db.close()
            self._db = None

    @asynccontextmanager
    async def transaction(self, exclusive: bool = False) -> AsyncIterator[Tx]:
        db = self._db
        if db is None:
            raise RuntimeError("catalog used before start()")
        await db.execute("BEGIN IMMEDIATE")  # the write lock now: no upgrade deadlock later
        try:
            yield _SqliteTx(db)
        except BaseException:
            await db.execute("ROLLBACK")
            raise
        await db.execute("COMMIT")

    async def fetch(self, sql: str, params: Row = ()) -> list[tuple[Any, ...]]:
        if self._db is None:
            raise RuntimeError("catalog used before start()")
        return await _SqliteTx(self._db).fetch(sql, params)

    def retryable(self, error: BaseException) -> bool:
        return False  # busy_timeout already waits for the other writer


class _SqliteTx:
    def __init__(self, db: aiosqlite.Connection) -> None:
        self.db = db

    async def execute(self, sql: str, params: Row = ()) -> None:
        await self.db.execute(sql, tuple(params))

    async def executemany(self, sql: str, rows: Iterable[Row]) -> None:
        await self.db.executemany(sql, rows)

    async def fetch(self, sql: str, params: Row = ()) -> list[tuple[Any, ...]]:
        return [tuple(r) for r in await self.db.execute_fetchall(sql, tuple(params))]


_PLACEHOLDER = re.compile(r"\?")
MIGRATION_LOCK = 0x5F_CA7A_1060
"""PostgreSQL advisory lock held while migrating: two projectors starting together."""


def schema_of(url: str) -> str | None:
    """The first schema of a URL's ``search_path`` parameter, if any."""
    path = parse_qs(urlsplit(url).query).get("search_path")
    first = path[0].split(",")[0].strip().strip('"') if path else ""
    return first or None


def numbered(sql: str) -> str:
    """``?`` placeholders as PostgreSQL's ``$1, $2, ...`` (the catalog's SQL has no ``?`` in
    a literal)."""
    n = 0

    def repl(_: re.Match[str]) -> str:
        nonlocal n
        n += 1
        return f"${n}"

    return _PLACEHOLDER.sub(repl, sql)


class PostgresDriver:
    """A catalog in PostgreSQL: many projectors, readers and machines on one database."""

    name = "postgresql"
    ver_type = 'TEXT COLLATE "C"'

    def __init__(self, url: str) -> None:
        self.url = url
        self._conn: Any = None
        self._sql: dict[str, str] = {}

    async def connect(self) -> None:
        # Deferred: asyncpg is the optional `postgres` extra, needed only for this store.
        try:
            import asyncpg
        except ImportError as e:
            raise ConfigError("catalog_url names PostgreSQL, which needs asyncpg: "
                              "pip install 'streamflow[postgres]'") from e
        try:
            self._conn = await asyncpg.connect(self.url)
            schema = schema_of(self.url)
            if schema:  # the URL's search_path: the catalog's own schema, made if missing
                with contextlib.suppress(asyncpg.UniqueViolationError,
                                         asyncpg.DuplicateSchemaError):
                    await self._conn.execute(f'CREATE SCHEMA IF NOT EXISTS "{schema}"')
        except (OSError, asyncpg.PostgresError) as e:
            # The URL is not repeated: it may hold a password.
            raise ConfigError(f"cannot use the catalog database ({type(e).__name__}: {e}); "
                              "check catalog_url") from None

    async def close(self) -> None:
        if self._conn is not None:
            await self._conn.close()
            self._conn = None

    def sql(self, text: str) -> str:
        out = self._sql.get(text)
        if out is None:
            out = self._sql[text] = numbered(text)
        return out

    @asynccontextmanager
    async def transaction(self, exclusive: bool = False) -> AsyncIterator[Tx]:
        if self._conn is None:
            raise RuntimeError("catalog used before start()")
        async with self._conn.transaction():
            if exclusive:
                await self._conn.execute("SELECT pg_advisory_xact_lock($1)", MIGRATION_LOCK)
            yield _PostgresTx(self)

    async def fetch(self, sql: str, params: Row = ()) -> list[tuple[Any, ...]]:
        if self._conn is None:
            raise RuntimeError("catalog used before start()")
        return await _PostgresTx(self).fetch(sql, params)

    def retryable(self, error: BaseException) -> bool:
        sqlstate = getattr(error, "sqlstate", None)
        return sqlstate in ("40P01", "40001")  # deadlock detected, serialization failure


class _PostgresTx:
    def __init__(self, driver: PostgresDriver) -> None:
        self.d = driver

    async def execute(self, sql: str, params: Row = ()) -> None:
        await self.d._conn.execute(self.d.sql(sql), *params)

    async def executemany(self, sql: str, rows: Iterable[Row]) -> None:
        rows = list(rows)
        if rows:
            await self.d._conn.executemany(self.d.sql(sql), rows)

    async def fetch(self, sql: str, params: Row = ()) -> list[tuple[Any, ...]]:
        return [tuple(r) for r in await self.d._conn.fetch(self.d.sql(sql), *params)]


async def pause_before_retry(attempt: int) -> None:
    """A little longer each time, so two projectors that deadlocked do not meet again."""
    await asyncio.sleep(0.05 * (attempt + 1))
