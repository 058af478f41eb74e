"""The connector kit (streamflow.testing) holds every built-in connector to the same contract.

Each test runs ``check_source`` / ``check_sink`` against a built-in on its real system:
lifecycle, deterministic ids on re-read, checkpoint and resume, idempotent redelivery, and a
clear error from a misconfigured sink.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import sqlite3
import time
import uuid
from pathlib import Path
from typing import Any

import orjson
import pytest

from streamflow.connectors import build_sink, build_source
from streamflow.testing import check_sink, check_source

from .test_connector_kafka import make_topics, produce

# ------------------------------------------------------------------------------------- files


def _aged(path: Path, body: bytes) -> None:
    path.write_bytes(body)
    os.utime(path, (time.time() - 5, time.time() - 5))


async def test_kit_files_source(tmp_path: Path) -> None:
    landing = tmp_path / "landing"

    def seed() -> None:
        landing.mkdir()
        for f, n in (("a.jsonl", 3), ("b.jsonl", 2), ("c.jsonl", 2)):
            _aged(landing / f, b"".join(b'{"id": %d}\n' % i for i in range(n)))

    report = await check_source(
        lambda: build_source("files", {"path": landing, "format": "jsonl", "settle_s": 0}),
        expected_count=7, state_dir=tmp_path / "state", seed=seed)
    assert len(report.first_batch) == 3


async def test_kit_files_sink(tmp_path: Path) -> None:
    out = tmp_path / "out"

    def read_back() -> list[dict[str, Any]]:
        return [orjson.loads(line) for f in sorted(out.glob("*.jsonl"))
                for line in f.read_bytes().splitlines()]

    (tmp_path / "a-file").write_text("not a directory")
    await check_sink(lambda: build_sink("files", {"path": out}), read_back=read_back,
                     state_dir=tmp_path / "state",
                     bad_factory=lambda: build_sink("files", {"path": tmp_path / "a-file" / "x"}))


# ------------------------------------------------------------------------------------- kafka


async def test_kit_kafka_source(tmp_path: Path, kafka_bootstrap: str) -> None:
    topic = f"kit-src-{uuid.uuid4().hex[:8]}"

    async def seed() -> None:
        await make_topics(kafka_bootstrap, topic)
        rows = [(b"%d" % i, b'{"id": %d}' % i) for i in range(9)] + [(b"x", b"{not json")]
        await produce(kafka_bootstrap, topic, rows)

    report = await check_source(
        lambda: build_source("kafka", {"bootstrap": kafka_bootstrap, "topic": topic,
                                       "batch_size": 2}),
        expected_count=9, state_dir=tmp_path / "state", seed=seed, name=f"kit-{topic}")
    assert report.rejects == 1
    assert all(rid.startswith(f"{topic}:") for rid in report.record_ids)


async def test_kit_kafka_sink(tmp_path: Path, kafka_bootstrap: str) -> None:
    from .test_connector_kafka import consume_all

    topic = f"kit-snk-{uuid.uuid4().hex[:8]}"
    await make_topics(kafka_bootstrap, topic)

    async def read_back() -> list[dict[str, Any]]:
        """Kafka appends; a consumer dedupes by the arrival-id header, as documented."""
        latest = {h["streamflow-arrival-id"]: (k, v) for k, v, h in
                  await consume_all(kafka_bootstrap, topic)}
        return [{"_key": k.decode() if k else None, **v} for k, v in latest.values()]

    await check_sink(
        lambda: build_sink("kafka", {"bootstrap": kafka_bootstrap, "topic": topic}),
        read_back=read_back, state_dir=tmp_path / "state",
        bad_factory=lambda: build_sink("kafka", {"bootstrap": "127.0.0.1:1", "topic": topic}))


# ------------------------------------------------------------------------------------ sqlite


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


# ---------------------------------------------------------------------------------- postgres


@pytest.fixture(scope="module")
def postgres_dsn() -> str:
    from streamflow import services

    services.up(["postgres"])
    return services.POSTGRES_DSN


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


# ----------------------------------------------------------------------------------- webhook


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_kit_webhook_source(tmp_path: Path) -> None:
    """Clients retry until 202 (the webhook's durability contract): that is the 'seed'."""
    import aiohttp

    port = _free_port()
    url = f"http://127.0.0.1:{port}/in"
    clients: list[asyncio.Task[None]] = []

    async def post_until_accepted(session: aiohttp.ClientSession, i: int) -> None:
        while True:
            with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                async with session.post(url, json={"id": i},
                                        headers={"Idempotency-Key": f"req-{i}"}) as r:
                    if r.status == 202:
                        return
            await asyncio.sleep(0.1)

    session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30))

    def seed() -> None:
        clients.extend(asyncio.create_task(post_until_accepted(session, i)) for i in range(5))

    try:
        report = await check_source(
            lambda: build_source("webhook", {"port": port, "path": "/in"}),
            expected_count=5, state_dir=tmp_path / "state", seed=seed, finite=False)
        await asyncio.wait_for(asyncio.gather(*clients), 30)  # every request was accepted
    finally:
        for c in clients:
            c.cancel()
        await session.close()
    assert sorted(report.record_ids) == [f"key:req-{i}:0" for i in range(5)]


@contextlib.asynccontextmanager
async def _receiver() -> Any:
    """An HTTP endpoint that stores enveloped records by key, like a real idempotent API."""
    from aiohttp import web

    rows: dict[str, Any] = {}

    async def handle(request: web.Request) -> web.Response:
        for item in await request.json():
            rows[item["key"] or item["arrival_id"]] = item
        return web.json_response({"ok": True})

    app = web.Application()
    app.router.add_post("/hook", handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield f"http://127.0.0.1:{port}/hook", rows
    finally:
        await runner.cleanup()


async def test_kit_webhook_sink(tmp_path: Path) -> None:
    async with _receiver() as (url, rows):
        await check_sink(
            lambda: build_sink("webhook", {"url": url, "envelope": True, "batch_size": 4}),
            read_back=lambda: list(rows.values()), state_dir=tmp_path / "state",
            bad_factory=lambda: build_sink("webhook", {
                "url": f"http://127.0.0.1:{_free_port()}/hook", "max_retries": 1,
                "retry_backoff_s": 0, "timeout_s": 2}))


# ------------------------------------------------------------------------------------ stdout


async def test_kit_stdout_sink(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """stdout is at-least-once by design: read_back dedupes by arrival id, as a reader must."""
    printed: list[str] = []

    def read_back() -> list[dict[str, Any]]:
        printed.extend(capsys.readouterr().out.splitlines())
        latest = {}
        for line in printed:
            row = orjson.loads(line)
            latest[row["_arrival_id"]] = row
        return list(latest.values())

    await check_sink(lambda: build_sink("stdout", {"include_metadata": True}),
                     read_back=read_back, state_dir=tmp_path / "state")
    assert len(printed) > 6, "a redelivered record is printed again (documented)"


# ---------------------------------------------------------------------------------- schedule


@pytest.mark.parametrize("connector, config", [
    ("interval", {"every_s": 60}),
    ("cron", {"schedule": "*/5 * * * *"}),
])
async def test_kit_schedule_sources(tmp_path: Path, connector: str, config: dict[str, Any]
                                    ) -> None:
    """Ticks from a fixed past start are deterministic; count makes the source finite."""
    cfg = {**config, "start": "2026-01-01T00:00:00Z", "count": 4, "catch_up": True}
    report = await check_source(lambda: build_source(connector, cfg), expected_count=4,
                                state_dir=tmp_path / "state", name=f"kit-{connector}")
    assert report.record_ids[0].endswith("2026-01-01T00:00:00+00:00")


# ------------------------------------------------------------- the kit catches broken ones


class _Src:
    """A finite source whose faults are switched on one at a time."""

    def __init__(self, *, random_ids: bool = False, forgets: bool = False,
                 stop_twice_fails: bool = False) -> None:
        self.random_ids, self.forgets, self.stop_twice_fails = random_ids, forgets, \
            stop_twice_fails
        self.state: Path | None = None
        self.stopped = False

    async def setup(self, ctx: Any) -> None:
        self.state = Path(ctx.state_dir) / "pos"

    async def read(self) -> Any:
        from streamflow.connectors import SourceBatch, SourceRecord

        assert self.state is not None
        start = int(self.state.read_text()) if self.state.exists() and not self.forgets else 0
        for b in range(start, 6, 2):
            yield SourceBatch([SourceRecord({"n": n}, {"n": n},
                                            uuid.uuid4().hex if self.random_ids else f"n{n}")
                               for n in (b, b + 1)], position=str(b + 2))

    async def ack(self, batch: Any) -> None:
        assert self.state is not None
        self.state.parent.mkdir(parents=True, exist_ok=True)
        self.state.write_text(batch.position)

    async def stop(self) -> None:
        if self.stopped and self.stop_twice_fails:
            raise RuntimeError("already stopped")
        self.stopped = True


@pytest.mark.parametrize("fault, message", [
    ({"random_ids": True}, "deterministic ids"),
    ({"forgets": True}, "checkpoint"),
    ({"stop_twice_fails": True}, "stop must be idempotent"),
])
async def test_kit_fails_a_broken_source(tmp_path: Path, fault: dict[str, bool],
                                         message: str) -> None:
    await check_source(lambda: _Src(), expected_count=6, state_dir=tmp_path / "ok")
    with pytest.raises(AssertionError, match=f"connector kit: .*{message}"):
        await check_source(lambda: _Src(**fault), expected_count=6, state_dir=tmp_path / "bad")


class _AppendingSink:
    """Appends instead of upserting: redelivery duplicates rows."""

    location = "memory"
    rows: list[dict[str, Any]]

    async def setup(self, ctx: Any) -> None: ...
    async def write(self, records: Any) -> None:
        self.rows.extend(r.value for r in records)
    async def flush(self) -> None: ...
    async def stop(self) -> None: ...


async def test_kit_fails_a_sink_that_duplicates_or_accepts_bad_config(tmp_path: Path) -> None:
    store: list[dict[str, Any]] = []

    def make() -> _AppendingSink:
        s = _AppendingSink()
        s.rows = store
        return s

    with pytest.raises(AssertionError, match="connector kit: idempotent redelivery"):
        await check_sink(make, read_back=lambda: store, state_dir=tmp_path)

    out = tmp_path / "out"

    def files_rows() -> list[dict[str, Any]]:
        return [orjson.loads(x) for f in out.glob("*.jsonl") for x in f.read_bytes().splitlines()]

    with pytest.raises(AssertionError, match="connector kit: error handling"):
        await check_sink(lambda: build_sink("files", {"path": out}), read_back=files_rows,
                         state_dir=tmp_path, bad_factory=make)  # accepts anything: no error
