"""The catalog (issue 21, step 1): the control topics folded into SQLite and PostgreSQL.

On both stores (the real PostgreSQL of the dev services) and, where reading matters, both
transports: the catalog's runs equal the ledger's own fold (what ``streamflow runs`` shows);
two projectors on one database equal one; batches applied in any order equal log order; a
projector SIGKILLed mid-batch and restarted equals a fresh rebuild, row for row; migrations
apply to an empty database and again to an up-to-date one.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import subprocess
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import orjson
import pytest
from pydantic import SecretStr

from streamflow import Settings, run_pipeline
from streamflow.catalog import (
    CATALOG_SCHEMA,
    MIGRATIONS,
    Batch,
    Projector,
    SqlCatalog,
    dump,
    freshness,
    open_catalog,
    read_runs,
    sources,
)
from streamflow.catalog._rows import add_messages
from streamflow.cli._main import build_parser
from streamflow.errors import ConfigError
from streamflow.model import OutMessage, contracts_topic, hold_topic, jobs_topic, runs_topic
from streamflow.ops import list_dead_letters, list_runs
from streamflow.state import read_ledger, validated
from streamflow.transports import Transport, make_transport

from . import catalog_traffic as traffic
from .faults import CATALOG_CRASH_BEFORE_COMMIT, command, subprocess_env
from .test_gates import RECORD_CHECKS, Collect, Out, order, record_gate

pytestmark = pytest.mark.timeout(120)
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(params=["sqlite", "postgres"])
def store_kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def dsn(store_kind: str, request: pytest.FixtureRequest) -> str:
    """The dev services' PostgreSQL (started if need be), or "" for SQLite."""
    return str(request.getfixturevalue("postgres_dsn")) if store_kind == "postgres" else ""


@pytest.fixture
def schemas(dsn: str) -> Iterator[list[str]]:
    """PostgreSQL schemas the test made (one per catalog), dropped after it."""
    made: list[str] = []
    yield made
    if made:
        async def drop() -> None:
            conn = await asyncpg.connect(dsn)
            for s in made:
                await conn.execute(f'DROP SCHEMA IF EXISTS "{s}" CASCADE')
            await conn.close()
        asyncio.run(drop())


def catalog_settings(settings: Settings, kind: str, dsn: str, schemas: list[str],
                     name: str = "") -> Settings:
    """``settings`` with a catalog of its own: a SQLite file, or a PostgreSQL schema."""
    if kind == "sqlite":
        path = settings.state_dir / f"catalog-{name or 'main'}.db"
        return settings.model_copy(update={"catalog_url": SecretStr(f"sqlite://{path}")})
    schema = f"cat_{uuid.uuid4().hex[:12]}"
    schemas.append(schema)
    return settings.model_copy(update={"catalog_url": SecretStr(f"{dsn}?search_path={schema}")})


async def _started(s: Settings) -> SqlCatalog:
    store = open_catalog(s)
    await store.start()
    return store


@pytest.fixture
async def transport(settings: Settings) -> AsyncIterator[Transport]:
    t = make_transport(settings)
    await t.start()
    yield t
    await t.close()


@dataclass
class Bare:
    """An embedded namespace with its control topics, and a catalog of its own."""

    settings: Settings
    t: Transport
    store: SqlCatalog


@pytest.fixture
async def bare(tmp_path: Path, namespace: str, store_kind: str, dsn: str,
               schemas: list[str]) -> AsyncIterator[Bare]:
    settings = Settings(state_dir=tmp_path / "state", namespace=namespace, http_port=0)
    t = make_transport(settings)
    await t.start()
    store = await _started(catalog_settings(settings, store_kind, dsn, schemas))
    try:
        await traffic.ensure_topics(t, settings)
        yield Bare(settings, t, store)
    finally:
        await store.close()
        await t.close()


async def test_runs_equal_the_ledgers_fold_on_both_stores_and_transports(
        settings: Settings, transport: Transport, store_kind: str, dsn: str,
        schemas: list[str]) -> None:
    await traffic.publish_all(transport, settings)
    store = await _started(catalog_settings(settings, store_kind, dsn, schemas))
    try:
        read = await Projector(transport, store, settings, batch_rows=40).catch_up()
        assert read > 0
        ledger = validated(await read_ledger(transport, runs_topic(settings.namespace)))
        catalog = await read_runs(store)
        assert {k: v.model_dump() for k, v in catalog.items()} == \
            {k: v.model_dump() for k, v in ledger.items()}
        statuses = sorted(r.status for r in catalog.values() if r.stage == "gate")
        assert statuses == ["held", "released"]
        holds = await store.fetch("SELECT held, parked FROM holds ORDER BY held")
        assert holds == [(0, 0), (1, 1)]  # the released key's tombstone, the one still held
        dl = await store.fetch("SELECT id, payload, sensitive FROM dead_letters ORDER BY ts_ms")
        assert len(dl) == 3 and '"card":"***"' in dl[0][1].replace(" ", "")
        assert "4111" in dl[1][1]  # no sensitive field named: shown as it is
        assert await store.fetch("SELECT asset, version FROM contracts") == [("sales", 1)]
        assert await store.fetch("SELECT id, status FROM backfills") == [("bf-1", "completed")]
        fresh = await freshness(transport, store)
        assert fresh and all(f.lag_records == 0 and f.lag_s == 0 for f in fresh)
        # Nothing new: a second catch-up reads nothing and changes nothing.
        before = await dump(store)
        assert await Projector(transport, store, settings).catch_up() == 0
        assert await dump(store) == before
    finally:
        await store.close()


async def _chunks(t: Transport, s: Settings) -> list[tuple[Any, list[Any]]]:
    """Every source's messages in small chunks, as separate projectors could meet them."""
    out = []
    for source in [*sources(s), traffic.hold_source(s)]:
        async for chunk in t.scan_topic(source.topic):
            out += [(source, chunk[i:i + 7]) for i in range(0, len(chunk), 7)]
    return out


async def test_batches_in_any_order_and_two_projectors_equal_one(
        tmp_path: Path, namespace: str, store_kind: str, dsn: str,
        schemas: list[str]) -> None:
    """No row goes back to an older version: chunks applied in a shuffled order, and two
    projectors racing on one database, give what one projector in log order gives."""
    settings = Settings(state_dir=tmp_path / "state", namespace=namespace, http_port=0)
    t = make_transport(settings)
    await t.start()
    stores: list[SqlCatalog] = []
    try:
        await traffic.publish_all(t, settings, batches=6, per_batch=20)
        one = await _started(catalog_settings(settings, store_kind, dsn, schemas, "a"))
        shuffled = await _started(catalog_settings(settings, store_kind, dsn, schemas,
                                                   "b"))
        shared = catalog_settings(settings, store_kind, dsn, schemas, "c")
        racing = [await _started(shared), await _started(shared)]
        stores += [one, shuffled, *racing]
        await Projector(t, one, settings).catch_up()
        expected = await dump(one)
        chunks = await _chunks(t, settings)
        random.Random(7).shuffle(chunks)
        for source, chunk in chunks:
            batch = Batch()
            add_messages(source, chunk, batch)
            await shuffled.apply(batch, {}, 0)
        assert await dump(shuffled) == expected
        await asyncio.gather(*(Projector(t, s, settings, batch_rows=9).catch_up()
                               for s in racing))
        assert await dump(racing[0]) == expected
        assert {k: p.next_offset for k, p in (await racing[0].positions()).items()} == \
            {k: p.next_offset for k, p in (await one.positions()).items()}
    finally:
        for s in stores:
            await s.close()
        await t.close()


async def test_migrations_apply_to_an_empty_database_and_again(
        tmp_path: Path, namespace: str, store_kind: str, dsn: str,
        schemas: list[str]) -> None:
    settings = Settings(state_dir=tmp_path / "state", namespace=namespace, http_port=0)
    s = catalog_settings(settings, store_kind, dsn, schemas)
    together = [open_catalog(s), open_catalog(s)]
    await asyncio.gather(*(c.start() for c in together))  # two starting at once: once each
    for c in together:
        await c.close()
    store = await _started(s)  # and again on an up-to-date database: nothing to do
    try:
        assert await store.schema_version() == CATALOG_SCHEMA
        steps = await store.fetch("SELECT version, name FROM schema_version ORDER BY version")
        assert steps == [(m.version, m.name) for m in MIGRATIONS]
        assert await store.fetch("SELECT COUNT(*) FROM runs") == [(0,)]
    finally:
        await store.close()


def _cli_args(s: Settings, args: tuple[str, ...], fault: int | None
              ) -> tuple[list[str], dict[str, str]]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("STREAMFLOW_")}
    env |= {"STREAMFLOW_STATE_DIR": str(s.state_dir), "STREAMFLOW_NAMESPACE": s.namespace}
    if s.catalog_url is not None:
        env["STREAMFLOW_CATALOG_URL"] = s.catalog_url.get_secret_value()
    if fault is not None:
        env[CATALOG_CRASH_BEFORE_COMMIT] = str(fault)
    return command(["catalog", *args], env), subprocess_env(env)


def _cli(s: Settings, *args: str, fault: int | None = None) -> subprocess.CompletedProcess[str]:
    cmd, env = _cli_args(s, args, fault)
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=60, cwd=ROOT)


def _start(s: Settings, *args: str, fault: int | None = None) -> subprocess.Popen[str]:
    cmd, env = _cli_args(s, args, fault)
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, cwd=ROOT)


async def _equals_a_fresh_rebuild(settings: Settings, store: SqlCatalog, kind: str, dsn: str,
                                  schemas: list[str]) -> None:
    rebuilt_at = catalog_settings(settings, kind, dsn, schemas, "fresh")
    rebuilt = _cli(rebuilt_at, "rebuild", "--json")
    assert rebuilt.returncode == 0, rebuilt.stderr
    assert orjson.loads(rebuilt.stdout)["messages"] > 0
    fresh = await _started(rebuilt_at)
    try:
        assert await dump(store) == await dump(fresh)
        assert {k: p.next_offset for k, p in (await store.positions()).items()} == \
            {k: p.next_offset for k, p in (await fresh.positions()).items()}
    finally:
        await fresh.close()


async def test_a_projector_killed_mid_batch_and_restarted_equals_a_fresh_rebuild(
        tmp_path: Path, namespace: str, store_kind: str, dsn: str,
        schemas: list[str]) -> None:
    settings = Settings(state_dir=tmp_path / "state", namespace=namespace, http_port=0)
    t = make_transport(settings)
    await t.start()
    try:
        await traffic.publish_all(t, settings, batches=5, per_batch=30)
    finally:
        await t.close()
    followed = catalog_settings(settings, store_kind, dsn, schemas)
    # Batches of 3 rows: three commits read the compacted ledger topic (a record is a run
    # and its input), the fourth one of the retained topic's 10 batches of 30 runs (120
    # rows), the fifth dies before its commit.
    killed = _cli(followed, "follow", "--once", "--batch", "3", fault=5)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    store = await _started(followed)
    try:
        partial = await store.fetch("SELECT COUNT(*) FROM runs")
        assert 0 < partial[0][0] < 300  # four batches committed, the fifth lost whole
        done = _cli(followed, "follow", "--once", "--batch", "3")
        assert done.returncode == 0, done.stderr
        await _equals_a_fresh_rebuild(settings, store, store_kind, dsn, schemas)
        status = _cli(followed, "status", "--json")
        assert status.returncode == 0, status.stderr
        body = orjson.loads(status.stdout)
        assert body["schema_version"] == CATALOG_SCHEMA and body["rows"]["runs"] > 300
        assert all(f["lag_records"] == 0 for f in body["freshness"])
    finally:
        await store.close()


async def test_two_followers_one_killed_mid_batch_and_restarted_equal_a_rebuild(
        tmp_path: Path, namespace: str, store_kind: str, dsn: str,
        schemas: list[str]) -> None:
    """Two ``catalog follow`` processes on one database while the ledger grows; one is
    SIGKILLed before its sixth commit while the other goes on, and then restarted: the
    catalog holds the rows of a fresh rebuild."""
    settings = Settings(state_dir=tmp_path / "state", namespace=namespace, http_port=0)
    t = make_transport(settings)
    await t.start()
    shared = catalog_settings(settings, store_kind, dsn, schemas)
    store = await _started(shared)  # the schema first: both processes find it applied
    followers: list[subprocess.Popen[str]] = []
    try:
        await traffic.publish_all(t, settings, batches=2, per_batch=10)
        follow = ("follow", "--interval", "0.05", "--batch", "40")
        other, doomed = _start(shared, *follow), _start(shared, *follow, fault=6)
        followers += [other, doomed]
        for _ in range(600):  # the ledger grows until the doomed follower has died
            await traffic.publish_runs(t, settings, batches=1, per_batch=15)
            if doomed.poll() is not None:
                break
            await asyncio.sleep(0.05)
        assert doomed.wait(5) == -signal.SIGKILL, doomed.communicate()[1]
        await traffic.publish_runs(t, settings, batches=3, per_batch=15)
        again = _cli(shared, "follow", "--once", "--batch", "40")
        assert again.returncode == 0, again.stderr
        other.send_signal(signal.SIGTERM)
        assert other.wait(30) == 0, other.communicate()[1]
        await _equals_a_fresh_rebuild(settings, store, store_kind, dsn, schemas)
    finally:
        for p in followers:
            if p.poll() is None:
                p.kill()
                p.wait()
        await store.close()
        await t.close()


async def test_a_gated_pipelines_runs_holds_and_dead_letters_as_the_clis_show_them(
        tmp_path: Path, namespace: str, store_kind: str, dsn: str,
        schemas: list[str]) -> None:
    """What the engine itself wrote (a gate holding two days, parking, releasing one after a
    fix): the catalog shows what ``streamflow runs`` and ``dlq list`` show."""
    settings = Settings(state_dir=tmp_path / "state", namespace=namespace, http_port=0)
    out: Out = {}
    first = [[order(1, "d1"), order(2, "d1", amount=-5), order(3, "d1"), order(4, "d2"),
              order(5, "d2", sku="sku_x"), order(6, "d3")], [order(7, "d1")]]
    await run_pipeline(record_gate(first, out, Collect(), RECORD_CHECKS), settings)
    fixed = [[order(2, "d1", amount=5, _rid="2-fixed")]]
    await run_pipeline(record_gate(fixed, out, Collect(), RECORD_CHECKS), settings)
    t = make_transport(settings)
    await t.start()
    store = await _started(catalog_settings(settings, store_kind, dsn, schemas))
    try:
        await Projector(t, store, settings).catch_up()
        ledger = {r.run_id: r.model_dump() for r in await list_runs(settings)}
        assert {k: v.model_dump() for k, v in (await read_runs(store)).items()} == ledger
        assert await store.fetch("SELECT partition_key, held FROM holds ORDER BY 1") == [
            ("d1", 0), ("d2", 1)]
        letters = {e.id: e.body["reason"] for e in await list_dead_letters(settings)}
        assert dict(await store.fetch("SELECT id, reason FROM dead_letters")) == letters
        assert await store.fetch("SELECT asset FROM contracts ORDER BY 1") == [
            ("clean",), ("orders",)]
    finally:
        await store.close()
        await t.close()


async def _count(store: SqlCatalog, table: str) -> int:
    return int((await store.fetch(f"SELECT COUNT(*) FROM {table}"))[0][0])


async def _until(store: SqlCatalog, table: str, n: int) -> None:
    for _ in range(200):
        if await _count(store, table) == n:
            return
        await asyncio.sleep(0.05)
    assert await _count(store, table) == n


async def test_a_follower_folds_news_and_prunes_past_the_catalogs_own_retention(
        tmp_path: Path, namespace: str) -> None:
    """A follower folds what comes while it follows. Pruning takes runs (with their inputs
    and outputs) older than the cutoff and nothing newer; a follower with
    ``catalog_retention_s`` prunes by itself. The test's runs ended in November 2026."""
    settings = Settings(state_dir=tmp_path / "state", namespace=namespace, http_port=0)
    t = make_transport(settings)
    await t.start()
    store = await _started(settings)
    stop = asyncio.Event()
    try:
        await traffic.ensure_topics(t, settings)
        following = asyncio.create_task(Projector(t, store, settings, idle_s=0.05).follow(stop))
        await traffic.publish_runs(t, settings, batches=2, per_batch=5)
        await traffic.publish_others(t, settings)
        await _until(store, "runs", 20)
        await _until(store, "dead_letters", 3)
        stop.set()
        await asyncio.wait_for(following, 10)
        cutoff = traffic.T0 + 11  # runs 1 to 5 ended before it
        assert await store.prune(cutoff) == 5
        assert (await store.fetch("SELECT MIN(ended_ms) FROM runs"))[0][0] >= cutoff
        assert await store.fetch("SELECT COUNT(*) FROM run_outputs WHERE run_id NOT IN "
                                 "(SELECT run_id FROM runs)") == [(0,)]
        hour = settings.model_copy(update={"catalog_retention_s": 3600.0})
        stop = asyncio.Event()
        following = asyncio.create_task(Projector(t, store, hour, idle_s=0.05).follow(stop))
        await _until(store, "runs", 0)
        assert await _count(store, "dead_letters") == 3  # written just now
        stop.set()
        await asyncio.wait_for(following, 10)
    finally:
        stop.set()
        await store.close()
        await t.close()


def test_a_catalog_url_that_is_neither_postgresql_nor_sqlite_is_refused_unrepeated(
        tmp_path: Path) -> None:
    s = Settings(state_dir=tmp_path, catalog_url=SecretStr("mysql://u:hunter2@h/db"))
    with pytest.raises(ConfigError) as e:
        open_catalog(s)
    assert "hunter2" not in str(e.value) and "postgresql://" in str(e.value)


async def test_damaged_and_newer_messages_are_skipped_and_the_projector_goes_on(
        bare: Bare) -> None:
    """Garbage, records missing fields, a NUL character (PostgreSQL's text refuses it) and a
    newer ledger format: each is passed (its position moves on), the rest is folded."""
    settings, t, store = bare.settings, bare.t, bare.store
    ns, runs = settings.namespace, runs_topic(settings.namespace)
    bad = [b"not json", b"[1, 2]", orjson.dumps({"v": 1, "run_id": "r-bad", "stage": "s"}),
           orjson.dumps({"v": 1, "run_id": "r-bad2", "stage": "s", "partition": "p",
                         "status": "retrying", "attempt": "one", "max_attempts": 3}),
           orjson.dumps({"v": 99, "runs": [{"run_id": "from-the-future"}]})]
    await t.publish([OutMessage(runs, v, f"k{i}".encode(), []) for i, v in enumerate(bad)])
    await t.publish([OutMessage(settings.dead_letter_topic, b"\x00garbage\x00", b"k", []),
                     OutMessage(hold_topic(ns, "gate"), b"{}", b"k", []),
                     OutMessage(jobs_topic(ns), b"{\"id\": 1}", b"k", []),
                     OutMessage(contracts_topic(ns), b"[]", b"k", [])])
    await traffic.publish_runs(t, settings, batches=1, per_batch=3, parts=1)
    await traffic.publish_lifecycles(t, settings)
    assert await Projector(t, store, settings).catch_up() > 0
    assert await _count(store, "runs") == 3 + 4
    (payload,) = (await store.fetch("SELECT payload FROM dead_letters"))[0]
    assert "garbage" in payload and "\x00" not in payload
    assert all(f.lag_records == 0 for f in await freshness(t, store))


def test_catalog_url_from_a_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    secret = tmp_path / "url"
    secret.write_text("postgresql://u:hunter2@127.0.0.1/db\n")
    monkeypatch.delenv("STREAMFLOW_CATALOG_URL", raising=False)
    monkeypatch.setenv("STREAMFLOW_CATALOG_URL_FILE", str(secret))
    s = Settings.load()
    assert s.catalog_url is not None
    assert s.catalog_url.get_secret_value() == "postgresql://u:hunter2@127.0.0.1/db"
    assert "hunter2" not in repr(s)
    monkeypatch.setenv("STREAMFLOW_CATALOG_URL_FILE", str(tmp_path / "missing"))
    with pytest.raises(ConfigError, match="STREAMFLOW_CATALOG_URL_FILE"):
        Settings.load()


async def test_numbers_past_64_bits_skip_their_record_not_the_batch(bare: Bare) -> None:
    """Past BIGINT (orjson reads up to 2**64 - 1): PostgreSQL would refuse the whole batch,
    again at every try; the record is skipped instead."""
    settings, t, store = bare.settings, bare.t, bare.store
    namespace = settings.namespace
    huge = {"v": 1, "run_id": "r-huge", "stage": "s", "partition": "p", "status": "retrying",
            "attempt": 2**63 + 5, "max_attempts": 3, "started_ms": 1, "ended_ms": 2,
            "inputs": [], "outputs": []}
    hold = {"partition": "p", "kafka_partition": 0, "since_ms": 2**63}
    await t.publish([OutMessage(runs_topic(namespace), orjson.dumps(huge), b"r-huge", []),
                     OutMessage(hold_topic(namespace, "gate"), orjson.dumps(hold), b"p", [])])
    await traffic.publish_runs(t, settings, batches=1, per_batch=2, parts=1)
    await Projector(t, store, settings).catch_up()
    assert await _count(store, "runs") == 2
    assert await _count(store, "holds") == 0



@pytest.mark.parametrize("sub", ["rebuild", "status", "follow"])
def test_every_catalog_command_has_help(sub: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        build_parser().parse_args(["catalog", sub, "--help"])
    assert e.value.code == 0 and "--namespace" in capsys.readouterr().out


async def test_a_stopped_follower_ends_after_the_batch_it_is_writing(bare: Bare) -> None:
    """SIGTERM during a long catch-up: the batch being written commits, the rest is left for
    the next start, which goes on from there."""
    await traffic.publish_runs(bare.t, bare.settings, batches=10, per_batch=10)
    projector = Projector(bare.t, bare.store, bare.settings, batch_rows=40)
    # Stopped as its first batch is written (progress is told after each batch).
    assert 0 < await projector.catch_up(lambda done, total: projector.stop.set()) < 20
    assert 0 < await _count(bare.store, "runs") < 200
    assert await Projector(bare.t, bare.store, bare.settings).catch_up() > 0
    assert await _count(bare.store, "runs") == 200
