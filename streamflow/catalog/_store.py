"""The catalog's store: a ``CatalogStore`` Protocol and the one SQL implementation behind it,
on SQLite or PostgreSQL (``_drivers.py``).

A batch is one transaction: its rows and the positions they were read up to commit together,
so a projector killed mid-batch leaves neither, and starts again from the last commit.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from streamflow.errors import ConfigError
from streamflow.model import Settings

from ._drivers import Driver, PostgresDriver, SqliteDriver, Tx, pause_before_retry
from ._rows import TABLES, WRITE_ORDER, Batch
from ._schema import DATA_TABLES, MIGRATIONS, VERSION_TABLE

log = logging.getLogger("streamflow.catalog")

BEFORE_COMMIT: list[Callable[[int], None]] = []
"""Called with the batch's message count after its statements, before its commit: a neutral
seam for tests that crash a projector mid-batch (``tests/faults.py``)."""

_POSITION = (
    "INSERT INTO positions (topic, kafka_partition, next_offset, end_offset, last_ts_ms, "
    "caught_up_ms, updated_ms) VALUES (?, ?, ?, ?, ?, ?, ?) "
    "ON CONFLICT (topic, kafka_partition) DO UPDATE SET "
    + ", ".join(f"{c} = CASE WHEN excluded.{c} > positions.{c} THEN excluded.{c} "
                f"ELSE positions.{c} END"
                for c in ("next_offset", "end_offset", "last_ts_ms", "caught_up_ms"))
    + ", updated_ms = excluded.updated_ms")
_STALE = ("DELETE FROM {t} WHERE run_id IN ({ids}) AND ver < "
          "(SELECT r.ver FROM runs r WHERE r.run_id = {t}.run_id)")
_STALE_CHUNK = 500
"""Run ids per statement that drops older versions' inputs and outputs."""
_ATTEMPTS = 5


@dataclass(frozen=True, slots=True)
class Position:
    """How far the catalog has read one source partition, and how far behind it was."""

    topic: str
    partition: int
    next_offset: int
    end_offset: int
    """The partition's end when last looked at (a projector's own reading)."""
    last_ts_ms: int
    caught_up_ms: int
    """When the catalog last held everything this partition had: its freshness watermark."""


class CatalogStore(Protocol):
    """Where the catalog's rows live. The projector writes; CLIs and the API read."""

    async def start(self) -> None:
        """Connect and bring the schema up to ``CATALOG_SCHEMA``."""
        ...

    async def close(self) -> None: ...

    async def schema_version(self) -> int: ...

    async def positions(self) -> dict[tuple[str, int], Position]: ...

    async def apply(self, batch: Batch, ends: dict[tuple[str, int], int],
                    read_at_ms: int) -> None:
        """The batch's rows and positions, in one transaction. ``ends``: each partition's
        end as read before the batch (caught up when the batch reached it, at ``read_at_ms``)."""
        ...

    async def mark_caught_up(self, ends: dict[tuple[str, int], int], at_ms: int) -> None:
        """Partitions read to their end with nothing new: fresh as of ``at_ms``."""
        ...

    async def reset(self) -> None:
        """Every row and position gone (a rebuild refolds from the topics)."""
        ...

    async def prune(self, before_ms: int) -> int:
        """Runs and dead letters that ended before ``before_ms`` go; returns how many."""
        ...

    async def fetch(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        """A read-only query (``?`` placeholders), for readers of the catalog."""
        ...


class SqlCatalog:
    """The catalog on one SQL database, through a ``Driver``."""

    def __init__(self, driver: Driver) -> None:
        self.driver = driver

    @property
    def where(self) -> str:
        """Where it is, for people: a SQLite file's path, never a URL (it may hold a password)."""
        d = self.driver
        return str(d.path) if isinstance(d, SqliteDriver) else "PostgreSQL"

    async def start(self) -> None:
        await self.driver.connect()
        try:
            await self._migrate()
        except BaseException:
            await self.driver.close()
            raise

    async def close(self) -> None:
        await self.driver.close()

    async def _migrate(self) -> None:
        """Each pending step in a transaction of its own, under the migration lock: two
        projectors starting together apply each step once."""
        for step in MIGRATIONS:
            async with self.driver.transaction(exclusive=True) as tx:
                await tx.execute(VERSION_TABLE)
                done = await tx.fetch("SELECT 1 FROM schema_version WHERE version = ?",
                                      (step.version,))
                if done:
                    continue
                for statement in step.statements:
                    await tx.execute(statement.replace("{ver}", self.driver.ver_type))
                await tx.execute("INSERT INTO schema_version (version, name, applied_ms) "
                                 "VALUES (?, ?, ?)", (step.version, step.name, _now_ms()))
            log.info("catalog: applied schema step %d (%s)", step.version, step.name)

    async def schema_version(self) -> int:
        rows = await self.fetch("SELECT MAX(version) FROM schema_version")
        return int(rows[0][0] or 0) if rows else 0

    async def positions(self) -> dict[tuple[str, int], Position]:
        rows = await self.fetch("SELECT topic, kafka_partition, next_offset, end_offset, "
                                "last_ts_ms, caught_up_ms FROM positions")
        return {(r[0], int(r[1])): Position(str(r[0]), *(int(x) for x in r[1:])) for r in rows}

    async def apply(self, batch: Batch, ends: dict[tuple[str, int], int],
                    read_at_ms: int) -> None:
        for attempt in range(_ATTEMPTS):
            try:
                async with self.driver.transaction() as tx:
                    await self._write(tx, batch, ends, read_at_ms)
                    for callback in BEFORE_COMMIT:
                        callback(len(batch))
                return
            except Exception as e:
                if not self.driver.retryable(e) or attempt == _ATTEMPTS - 1:
                    raise
                log.info("catalog: a batch met another writer's (%s); writing it again", e)
                await pause_before_retry(attempt)

    async def _write(self, tx: Tx, batch: Batch, ends: dict[tuple[str, int], int],
                     read_at_ms: int) -> None:
        for name in WRITE_ORDER:  # sorted: two projectors take row locks in one order
            rows = batch.rows[name]
            if rows:
                await tx.executemany(TABLES[name].upsert(), [rows[k] for k in sorted(rows)])
        ids = sorted(batch.runs)
        for i in range(0, len(ids), _STALE_CHUNK):
            chunk = ids[i:i + _STALE_CHUNK]
            for child in ("run_inputs", "run_outputs"):
                await tx.execute(_STALE.format(t=child, ids=", ".join("?" * len(chunk))), chunk)
        now = _now_ms()
        await tx.executemany(_POSITION, [
            (topic, n, nxt, max(nxt, ends.get((topic, n), 0)), ts,
             read_at_ms if nxt >= ends.get((topic, n), 0) else 0, now)
            for (topic, n), (nxt, ts) in sorted(batch.positions.items())])

    async def mark_caught_up(self, ends: dict[tuple[str, int], int], at_ms: int) -> None:
        if not ends:
            return
        async with self.driver.transaction() as tx:
            await tx.executemany(
                "UPDATE positions SET caught_up_ms = ?, updated_ms = ? WHERE topic = ? AND "
                "kafka_partition = ? AND next_offset >= ? AND caught_up_ms < ?",
                [(at_ms, _now_ms(), t, n, end, at_ms) for (t, n), end in sorted(ends.items())])

    async def reset(self) -> None:
        async with self.driver.transaction() as tx:
            for name in DATA_TABLES:
                await tx.execute(f"DELETE FROM {name}")

    async def prune(self, before_ms: int) -> int:
        async with self.driver.transaction() as tx:
            gone = await tx.fetch("SELECT COUNT(*) FROM runs WHERE ended_ms < ?", (before_ms,))
            for child in ("run_inputs", "run_outputs"):
                await tx.execute(f"DELETE FROM {child} WHERE run_id IN "
                                 "(SELECT run_id FROM runs WHERE ended_ms < ?)", (before_ms,))
            await tx.execute("DELETE FROM runs WHERE ended_ms < ?", (before_ms,))
            dead = await tx.fetch("SELECT COUNT(*) FROM dead_letters WHERE ts_ms < ?",
                                  (before_ms,))
            await tx.execute("DELETE FROM dead_letters WHERE ts_ms < ?", (before_ms,))
        return int(gone[0][0]) + int(dead[0][0])

    async def fetch(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        return await self.driver.fetch(sql, params)


def _now_ms() -> int:
    return int(time.time() * 1000)


def open_catalog(settings: Settings) -> SqlCatalog:
    """The catalog ``settings`` name. ``catalog_url``: ``postgresql://...`` (its
    ``search_path`` parameter names a schema of the catalog's own, made if missing: one per
    namespace on a shared database) or ``sqlite:PATH``; unset, SQLite at
    ``<state_dir>/<namespace>/catalog.db``."""
    if settings.catalog_url is None:
        return SqlCatalog(SqliteDriver(settings.state_dir / settings.namespace / "catalog.db"))
    url = settings.catalog_url.get_secret_value()
    if url.startswith(("postgresql://", "postgres://")):
        return SqlCatalog(PostgresDriver(url))
    if url.startswith("sqlite:") and len(url) > len("sqlite:"):
        path = url.removeprefix("sqlite:")
        return SqlCatalog(SqliteDriver(Path(path[2:] if path.startswith("//") else path)))
    # The URL itself is not repeated: it may hold a password.
    raise ConfigError("catalog_url must be postgresql://... or sqlite:PATH (unset: SQLite "
                      "under the state dir)")
