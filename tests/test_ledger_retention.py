"""Ledger retention (issue 17, item 4): settled runs go to a time-retained topic and leave it
after ``ledger_retention_s``; runs that still need someone stay on the compacted topic until
resolved; a start reads only the dedupe window; a backfill says what it cannot rule out."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest
from pydantic import BaseModel

from streamflow import Asset, Pipeline, Settings
from streamflow.backfill import BackfillJob, Planner
from streamflow.connectors.testing import MemorySink
from streamflow.engine import Worker
from streamflow.engine._ledger import load_ledger, prune
from streamflow.model import Message, OutMessage, RetryPolicy, done_runs_topic, runs_topic
from streamflow.observability import Metrics, Tracing
from streamflow.ops import list_runs
from streamflow.state import ensure_ledger, fold_raw, input_count, merge, stale_batches
from streamflow.transports import make_transport

from .helpers import memory_source, read_topic

pytestmark = pytest.mark.timeout(180)

DAY_MS = 86_400_000
OLD = datetime(2024, 1, 1, tzinfo=UTC)


class Item(BaseModel):
    id: int
    at: datetime = OLD


items = Asset("items", Item, key="id", event_time="at")
done = Asset("done", Item, key="id")
FAST = RetryPolicy(attempts=2, backoff_s=0.05)


def pipeline(n: int, out: dict[str, dict[str, object]], tries: dict[int, int]) -> Pipeline:
    """Item 0 always fails (dead-lettered), item 1 fails once (settled on its retry)."""
    def work(x: Item) -> Item:
        tries[x.id] = tries.get(x.id, 0) + 1
        if x.id == 0 or (x.id == 1 and tries[x.id] == 1):
            raise RuntimeError(f"cannot work on {x.id}")
        return x

    p = Pipeline("retention")
    p.source(memory_source([[{"id": i} for i in range(n)]]), asset=items)
    p.stage(inputs=[items], output=done, name="work", retry=FAST)(work)
    p.sink(MemorySink(out), asset=done)
    return p


async def _run(p: Pipeline, settings: Settings) -> Worker:
    w = Worker(p, settings)
    await w.run()
    return w


async def test_settled_runs_leave_the_compacted_topic_and_open_ones_stay(
        settings: Settings) -> None:
    out: dict[str, dict[str, object]] = {}
    await _run(pipeline(5, out, {}), settings)

    ns = settings.namespace
    open_runs = fold_raw(await read_topic(settings, runs_topic(ns)))
    settled = fold_raw(await read_topic(settings, done_runs_topic(ns)))
    # The retried run's "retrying" record was tombstoned when it succeeded.
    assert {d["status"] for d in open_runs.values()} == {"dead-lettered"}
    assert len(open_runs) == 1
    assert sorted(d["status"] for d in settled.values()) == ["succeeded"] * 4
    assert {d["attempt"] for d in settled.values()} == {1, 2}
    runs = await list_runs(settings)  # readers see both topics as one ledger
    assert sorted(r.status for r in runs) == ["dead-lettered"] + ["succeeded"] * 4
    assert sorted(out) == ["1", "2", "3", "4"]


async def test_a_start_reads_open_runs_and_only_the_dedupe_window_of_settled_ones(
        settings: Settings) -> None:
    out: dict[str, dict[str, object]] = {}
    first = await _run(pipeline(6, out, {}), settings)
    assert first.metrics.ledger_loaded == {"open": 0, "done": 0}

    again = await _run(pipeline(6, out, {}), settings)  # within the window: all known
    assert again.metrics.ledger_loaded == {"open": 1, "done": 5}
    assert again.counters.deduped == 6 and again.counters.runs == 0

    await asyncio.sleep(1.5)
    short = settings.model_copy(update={"dedupe_window_s": 1.0})
    late = await _run(pipeline(6, out, {}), short)
    # Settled runs older than the window are not read; the dead-lettered one still is (it
    # ended before the window too, so it runs again, as every redelivery older than that).
    assert late.metrics.ledger_loaded == {"open": 1, "done": 0}
    assert (late.counters.deduped, late.counters.records_out) == (0, 5)


async def test_the_embedded_log_drops_settled_runs_after_retention(tmp_path: Path) -> None:
    settings = Settings(state_dir=tmp_path, namespace="keep", http_port=None,
                        dedupe_window_s=1, ledger_retention_s=1)
    out: dict[str, dict[str, object]] = {}
    await _run(pipeline(5, out, {}), settings)
    await asyncio.sleep(1.2)
    t = make_transport(settings)
    await t.start()
    try:
        topic = done_runs_topic("keep")
        assert len(await t.read_topic(topic)) >= 1
        await t.ensure_topics([], retained={topic: 1.0})
        assert await t.compact() > 0  # type: ignore[attr-defined]
        kept = fold_raw(await t.read_topic(topic))
        open_runs = fold_raw(await t.read_topic(runs_topic("keep")))
        recent = await t.read_topic(topic, since_ms=int(time.time() * 1000) - 500)
    finally:
        await t.close()
    # The log keeps its last record (it fixes the next offset); nothing else settled stays.
    assert len(kept) <= 4 and not recent
    assert [d["status"] for d in open_runs.values()] == ["dead-lettered"]


async def test_kafka_retains_settled_runs_by_time_and_reads_from_a_time(
        kafka_bootstrap: str, tmp_path: Path, namespace: str) -> None:
    from aiokafka import AIOKafkaConsumer
    from aiokafka.admin import AIOKafkaAdminClient
    from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

    settings = Settings(state_dir=tmp_path, namespace=namespace, http_port=None,
                        kafka_bootstrap=kafka_bootstrap, ledger_retention_s=7200.0,
                        dedupe_window_s=3600.0)
    out: dict[str, dict[str, object]] = {}
    await _run(pipeline(5, out, {}), settings)
    topic = done_runs_topic(settings.namespace)
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap)
    await admin.start()
    try:
        (resp,) = await admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, topic)])
    finally:
        await admin.close()
    configs = configs_of(resp)
    assert (configs["cleanup.policy"], configs["retention.ms"], configs["segment.ms"]) == (
        "delete", "7200000", "1800000")

    t = make_transport(settings)
    await t.start()
    try:
        assert len(fold_raw(await t.read_topic(topic))) == 4
        assert not await t.read_topic(topic, since_ms=int(time.time() * 1000) + 60_000)
        # A new retention applies at the next start; what else an operator set on the
        # topic stays (Kafka's AlterConfigs replaces a topic's whole dynamic config).
        admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap)
        await admin.start()
        try:
            await admin.alter_configs([ConfigResource(
                ConfigResourceType.TOPIC, topic,
                {**configs_of(resp), "max.message.bytes": "2000000"})])
            await _settled_config(admin, topic, "max.message.bytes", "2000000")
            await ensure_ledger(t, runs_topic(settings.namespace), 14_400.0)
            after = await _settled_config(admin, topic, "retention.ms", "14400000")
        finally:
            await admin.close()
    finally:
        await t.close()
    now = configs_of(after)
    assert (now["retention.ms"], now["max.message.bytes"]) == ("14400000", "2000000")
    # The retried run's tombstone is a real one (a null value), or the cleaner keeps its key.
    consumer = AIOKafkaConsumer(bootstrap_servers=settings.kafka_bootstrap,
                                auto_offset_reset="earliest", enable_auto_commit=False)
    await consumer.start()
    try:
        consumer.subscribe([runs_topic(settings.namespace)])
        got = await consumer.getmany(timeout_ms=5000)
        while sum(map(len, got.values())) < 4:  # retrying x2, dead-lettered, tombstone
            more = await consumer.getmany(timeout_ms=5000)
            if not more:
                break
            for tp, recs in more.items():
                got.setdefault(tp, []).extend(recs)
    finally:
        await consumer.stop()
    assert [r.value for recs in got.values() for r in recs].count(None) == 1


async def _settled_config(admin: Any, topic: str, key: str, value: str) -> Any:
    """DescribeConfigs once ``key`` reads ``value`` (a change reaches it through the KRaft
    metadata log, a moment after AlterConfigs returns), or after 10 s as it then is."""
    from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

    for _ in range(50):
        (resp,) = await admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, topic)])
        if configs_of(resp).get(key) == value:
            break
        await asyncio.sleep(0.2)
    return resp


def configs_of(resp: Any) -> dict[str, str]:
    """A topic's overrides (source 1) in a DescribeConfigs response."""
    return {c[0]: c[1] for c in resp.resources[0][4] if c[3] == 1 and not isinstance(c[3], bool)}


def _legacy_batch(topic: str, ended_ms: int) -> Message:
    body = {"v": 2, "stage": "work", "max_attempts": 1, "output": "done",
            "runs": [{"run_id": "r-old", "partition": "p", "attempt": 1, "started_ms": 1,
                      "ended_ms": ended_ms, "inputs": [], "outputs": []}]}
    return Message(topic, 0, 0, b"batch-0123", orjson.dumps(body), [], 0)


def test_older_workers_batches_on_the_compacted_topic_go_after_retention() -> None:
    now = int(time.time() * 1000)
    old, new = _legacy_batch("ns.runs", now - 2 * DAY_MS), _legacy_batch("ns.runs", now)
    (tomb,) = stale_batches([old, new, Message("ns.runs", 0, 1, b"r1", b"", [], 0)],
                            now - DAY_MS)
    assert (tomb.topic, tomb.key, tomb.value) == ("ns.runs", b"batch-0123", b"")
    # A run on both topics is its later record, whichever topic it is on.
    a = {"r": {"status": "dead-lettered", "ended_ms": 5}}
    b = {"r": {"status": "succeeded", "ended_ms": 9}}
    assert merge(a, b)["r"]["status"] == merge(b, a)["r"]["status"] == "succeeded"


async def test_a_backfill_counts_inputs_older_than_retention_it_cannot_rule_out(
        tmp_path: Path) -> None:
    settings = Settings(state_dir=tmp_path, namespace="bf", http_port=None)
    out: dict[str, dict[str, object]] = {}
    p = pipeline(5, out, {})
    await _run(p, settings)
    job = BackfillJob(id="bf-1", target="t:p", pipeline="retention", asset="items",
                      stages=["work"], start=datetime(2023, 1, 1, tzinfo=UTC),
                      end=datetime(2025, 1, 1, tzinfo=UTC))

    async def plan(retention_s: float) -> tuple[int, int]:
        t = make_transport(settings)
        await t.start()
        try:
            got = await Planner(p, t, "bf", settings.dead_letter_topic, Tracing(None, "x"),
                                retention_s).plan(job)
        finally:
            await t.close()
        return sum(map(len, got.messages)), got.unruled

    # Every run is in the ledger (four settled, one dead-lettered): nothing is sent.
    assert await plan(settings.ledger_retention_s) == (0, 0)
    # The settled runs gone, as after retention: those four are sent, and counted.
    db = sqlite3.connect(tmp_path / "embedded.db")
    db.execute("DELETE FROM log WHERE topic=?", (done_runs_topic("bf"),))
    db.commit()
    db.close()
    assert await plan(1.0) == (4, 4)


def _v1(run_id: str, status: str, ended_ms: int, stage: str = "work") -> bytes:
    return orjson.dumps({"v": 1, "run_id": run_id, "stage": stage, "partition": "p",
                         "status": status, "attempt": 1, "max_attempts": 2, "started_ms": 1,
                         "ended_ms": ended_ms, "mode": "live", "replay": 0, "inputs": [],
                         "outputs": []})


async def test_a_start_tidies_open_records_of_settled_runs_and_finds_gate_history(
        tmp_path: Path) -> None:
    """A crash after an attempt's "retrying" record but before its commit, and a redelivery
    that then succeeded at attempt 1, leave an open record behind; a gated stage needs 64
    passing runs of history, further back than the dedupe window."""
    settings = Settings(state_dir=tmp_path, namespace="tidy", http_port=None,
                        dedupe_window_s=60, ledger_retention_s=86_400)
    now = int(time.time() * 1000)
    runs, done = runs_topic("tidy"), done_runs_topic("tidy")
    t = make_transport(settings)
    await t.start()
    try:
        await ensure_ledger(t, runs, settings.ledger_retention_s)
        old = [OutMessage(done, _v1(f"g{i}", "succeeded", now - 3_600_000, "gate"), None, [])
               for i in range(70)]
        await t.publish(old)  # an hour ago, as the log's timestamps say too
        await t.db.execute("UPDATE log SET ts=? WHERE topic=?",  # type: ignore[attr-defined]
                           (now - 3_600_000, done))
        await t.db.commit()  # type: ignore[attr-defined]
        await t.publish([OutMessage(runs, _v1("r1", "retrying", now - 2000), b"r1", []),
                         OutMessage(runs, _v1("r2", "dead-lettered", now - 2000), b"r2", []),
                         OutMessage(done, _v1("r1", "succeeded", now - 1000), b"r1", [])])
        plain = await load_ledger(t, settings, Metrics("x"))
        gated = await load_ledger(t, settings, Metrics("x"), ["gate"])
        left = fold_raw(await t.read_topic(runs))
    finally:
        await t.close()
    assert plain.open_at == {"r2": 0} and plain.runs["r1"]["status"] == "succeeded"
    assert list(left) == ["r2"], "r1's open record was tombstoned at start"
    assert not any(r.startswith("g") for r in plain.runs), "older than the dedupe window"
    assert sum(r.startswith("g") for r in gated.runs) == 70, "read back for gate history"


def test_a_brief_fold_keeps_what_a_start_needs_of_each_run_and_format() -> None:
    v2 = _legacy_batch("ns.runs.done", 7)
    body = orjson.loads(v2.value)
    body["runs"][0]["inputs"] = [["a", "p", 1, "id1"], ["b", "p", 1, "id2"]]
    body["runs"].append({"run_id": "r-skip", "partition": "q", "attempt": 1, "started_ms": 1,
                         "ended_ms": 8, "inputs": [["a", "q", 1, "id3"]], "outputs": [],
                         "status": "skipped"})
    v1 = {"run_id": "r-v1", "stage": "work", "partition": "z", "status": "released",
          "attempt": 1, "max_attempts": 1, "started_ms": 1, "ended_ms": 9,
          "inputs": [{"asset": "a", "partition": "z", "version": 1, "arrival_id": "x"}]}
    msgs = [Message("ns.runs.done", 0, 0, b"b", orjson.dumps(body), [], 0),
            Message("ns.runs.done", 0, 1, b"r-v1", orjson.dumps(v1), [], 0)]
    whole, brief = fold_raw(msgs), fold_raw(msgs, brief=True)
    assert set(whole) == set(brief) == {"r-old", "r-skip", "r-v1"}
    for rid, d in whole.items():
        assert brief[rid] == {"stage": d["stage"], "status": d["status"],
                              "ended_ms": d["ended_ms"], "n_inputs": len(d["inputs"])}
        assert input_count(brief[rid]) == input_count(d) == len(d["inputs"])


def test_a_start_keeps_each_stages_newest_runs_that_its_dedupe_window_can_hold() -> None:
    runs = {f"{st}{i}": {"stage": st, "status": "succeeded", "ended_ms": i, "n_inputs": 1}
            for st in ("a", "b") for i in range(10)}
    runs["c0"] = {"stage": "c", "status": "skipped", "ended_ms": 0, "n_inputs": 1}
    assert prune(runs, 3, keep={"a0"}) == 3 + 1 + 3 + 1
    assert sorted(runs) == ["a0", "a7", "a8", "a9", "b7", "b8", "b9", "c0"]
