"""The connector kit (``streamflow.connectors.testing``) on sqlite and postgres.

The contract every connector meets: lifecycle, deterministic ids on re-read, checkpoint and
resume, idempotent redelivery, and a clear error from a misconfigured sink."""

from __future__ import annotations

import contextlib
import sqlite3
import uuid
from pathlib import Path
from typing import Any

from streamflow.connectors import build_sink, build_source
from streamflow.connectors.testing import check_sink, check_source


async def test_kit_sqlite_source(tmp_path: Path) -> None:
    db = tmp_path / "src.db"

    def seed() -> None:
        with contextlib.closing(sqlite3.connect(db)) as conn:
            conn.execute("CREATE TABLE events (id INTEGER, name TEXT)")
            conn.executemany("INSERT INTO events VALUES (?, ?)",
                             [(i, f"n{i}") for i in range(8)])
            conn.commit()

    await check_source(
        lambda: build_source("sqlite", {"path": db, "table": "events", "cursor_column": "id",
                                        "batch_size": 3}),
        expected_count=8, state_dir=tmp_path / "state", seed=seed)


async def test_kit_sqlite_sink(tmp_path: Path) -> None:
    db = tmp_path / "out.db"

    def read_back() -> list[dict[str, Any]]:
        with contextlib.closing(sqlite3.connect(db)) as conn:
            conn.row_factory = sqlite3.Row
            return [dict(r) for r in conn.execute("SELECT * FROM sales")]

    (tmp_path / "a-file").write_text("not a directory")
    await check_sink(
        lambda: build_sink("sqlite", {"path": db, "table": "sales"}), read_back=read_back,
        state_dir=tmp_path / "state",
        bad_factory=lambda: build_sink("sqlite", {"path": tmp_path / "a-file" / "x.db",
                                                  "table": "sales", "retries": 1}))


async def _pg(dsn: str, sql: str, *args: Any) -> list[dict[str, Any]]:
    import asyncpg

    conn = await asyncpg.connect(dsn)
    try:
        return [dict(r) for r in await conn.fetch(sql, *args)]
    finally:
        await conn.close()


async def test_kit_postgres_source(tmp_path: Path, postgres_dsn: str) -> None:
    table = f"kit_src_{uuid.uuid4().hex[:8]}"

    async def seed() -> None:
        await _pg(postgres_dsn, f"CREATE TABLE {table} (id bigint, name text)")
        await _pg(postgres_dsn, f"INSERT INTO {table} SELECT i, 'n' || i "
                  "FROM generate_series(1, 8) AS i")

    await check_source(
        lambda: build_source("postgres", {"dsn": postgres_dsn, "table": table,
                                          "cursor_column": "id", "batch_size": 3}),
        expected_count=8, state_dir=tmp_path / "state", seed=seed)


async def test_kit_postgres_sink(tmp_path: Path, postgres_dsn: str) -> None:
    table = f"kit_snk_{uuid.uuid4().hex[:8]}"

    async def read_back() -> list[dict[str, Any]]:
        return await _pg(postgres_dsn, f"SELECT * FROM {table}")

    bad_dsn = postgres_dsn.replace(":5432/", ":1/")
    assert bad_dsn != postgres_dsn
    await check_sink(
        lambda: build_sink("postgres", {"dsn": postgres_dsn, "table": table}),
        read_back=read_back, state_dir=tmp_path / "state",
        bad_factory=lambda: build_sink("postgres", {"dsn": bad_dsn, "table": table,
                                                    "max_retries": 1, "connect_timeout_s": 2}))
