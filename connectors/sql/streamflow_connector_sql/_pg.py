"""What the PostgreSQL source and sink share: the asyncpg pool with retries, connection
settings, table introspection. asyncpg (the ``postgres`` extra) is imported on first use, so
this module imports without it."""

from __future__ import annotations

import asyncio
import importlib
import logging
import re
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar
from urllib.parse import urlsplit

import orjson
from pydantic import Field

from streamflow.connectors import ConnectorError

from ._codecs import qualified
from ._pg_security import PgSecurity, refused

log = logging.getLogger("streamflow.connectors.postgres")
T = TypeVar("T")


class PostgresUnavailable(ConnectionError):
    """The database stayed unreachable through every retry."""


class PostgresSinkError(RuntimeError):
    """A batch the database refused for a reason retrying cannot fix (schema, data)."""


def asyncpg_module() -> Any:
    try:  # deferred: asyncpg is the optional `postgres` extra
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


def table_ref(table: str) -> str:
    """``schema.table`` or ``table`` as a quoted SQL reference."""
    schema, _, name = table.rpartition(".")
    return qualified(name, schema or None)


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


class Db:
    """A lazily created asyncpg pool and a retry loop: transient failures are retried with
    exponential backoff, then reported as :class:`PostgresUnavailable` naming the endpoint."""

    def __init__(self, dsn: str, who: str, pool_size: int, max_retries: int, backoff_s: float,
                 connect_timeout_s: float, decode_json: bool = False,
                 security: PgSecurity | None = None) -> None:
        self.dsn, self.who, self.where = dsn, who, endpoint(dsn)
        self.security = security or PgSecurity()
        self.options = self.security.connect_options()  # password, ssl
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
                    self.pool = await asyncpg_module().create_pool(
                        self.dsn, min_size=1, max_size=self.pool_size,
                        timeout=self.connect_timeout_s, init=self._init, reset=_no_reset,
                        **self.options)
                async with self.pool.acquire(timeout=self.connect_timeout_s) as conn:
                    return await op(conn)
            except Exception as e:
                problem = refused(e, self.where, self.security.sslmode)
                if problem is not None:  # retrying cannot help: say what to check
                    await self.close()
                    raise ConnectorError(f"{self.who}: cannot {what}: {problem}") from None
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


class ConnConfig(PgSecurity):
    dsn: str = Field(description="PostgreSQL URL, e.g. postgresql://user:pw@host:5432/db")
    table: str = Field(description="table name; `schema.table` to name its schema")
    max_retries: int = Field(5, ge=0, description="retries of a connection failure")
    retry_backoff_s: float = Field(0.2, ge=0, description="first retry delay; doubles each time")
    connect_timeout_s: float = Field(10.0, gt=0, description="connect/acquire timeout")


_COLUMNS = ("SELECT a.attname, format_type(a.atttypid, a.atttypmod) FROM pg_attribute a "
            "WHERE a.attrelid = to_regclass($1) AND a.attnum > 0 AND NOT a.attisdropped "
            "ORDER BY a.attnum")


async def table_columns(conn: Any, ref: str) -> dict[str, str] | None:
    """Column -> declared type of a table, or None if it does not exist."""
    rows = await conn.fetch(_COLUMNS, ref)
    if not rows:
        if not await conn.fetchval("SELECT to_regclass($1) IS NOT NULL", ref):
            return None
        # It exists now: another writer (a second worker's sink) may have created it between
        # the two statements, so its columns are read again rather than taken to be none.
        rows = await conn.fetch(_COLUMNS, ref)
    return {r[0]: r[1] for r in rows}
