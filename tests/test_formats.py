"""Versioned formats: a worker reads what an older version wrote to StreamFlow's own topics
(ledger, changelog state, arrival headers), mid-stream, and refuses to misread a newer one."""

from __future__ import annotations

import logging
import sqlite3
from collections import Counter
from pathlib import Path

import orjson
import pytest

from streamflow import Settings, run_pipeline
from streamflow.connectors.testing import MemorySink
from streamflow.model import Message, RunInput, asset_topic, runs_topic
from streamflow.state import (
    LedgerBatch,
    compact_inputs,
    fold,
    fold_raw,
    read_ledger,
    record_message,
    run_entry,
    validated,
)
from streamflow.transports import make_transport

from .formats.pipeline import pipeline, priced, settled

FIXTURE = Path(__file__).parent / "formats" / "v1_topics.json"


def _msg(value: bytes, topic: str = "ns.runs") -> Message:
    return Message(topic, 0, 0, None, value, [], 0)


def _v1(run_id: str, status: str, *, versioned: bool) -> bytes:
    m = record_message("ns.runs", run_id=run_id, stage="s", partition="p", status=status,
                       attempt=1, max_attempts=3, started_ms=1, ended_ms=2, mode="live",
                       replay=0, inputs=[RunInput("a", "p", 1, f"in-{run_id}")], outputs=[],
                       error=None, trace_id=None)
    d = orjson.loads(m.value)
    if not versioned:  # as every worker before the version field wrote it
        del d["v"]
    return orjson.dumps(d)


def test_the_ledger_folds_both_formats_in_log_order() -> None:
    book = LedgerBatch("ns.runs", "s", 3, "out")
    for rid in ("r1", "r2"):
        book.add(0, run_entry(rid, "p", 2, 10, 20, compact_inputs([RunInput("a", "p", 1, "x")]),
                              [f"{rid}-o"], trace_id="ab" * 16))
    batch = book.drain()
    assert len(batch) == 1 and not book.drain()  # one message per batch and input partition
    log = [_msg(_v1("r1", "retrying", versioned=False)), _msg(batch[0].value),
           _msg(_v1("r3", "dead-lettered", versioned=True))]

    runs = fold(log)

    assert {r: rec.status for r, rec in runs.items()} == {
        "r1": "succeeded", "r2": "succeeded", "r3": "dead-lettered"}
    r1 = runs["r1"]
    assert (r1.stage, r1.attempt, r1.max_attempts, r1.outputs, r1.output, r1.trace_id) == (
        "s", 2, 3, ["r1-o"], "out", "ab" * 16)
    assert r1.inputs == [RunInput("a", "p", 1, "x")]
    # Every reader sees the v1 shape, whichever format a run came in.
    assert set(fold_raw(log)["r2"]) == set(fold_raw(log)["r3"])


def test_a_ledger_format_newer_than_the_worker_is_skipped_with_a_warning(
        caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    from streamflow.state import _ledger

    monkeypatch.setattr(_ledger, "_warned", set())  # warned once a process: not yet here
    future = orjson.dumps({"v": 99, "runs": [{"run_id": "r9"}]})
    with caplog.at_level(logging.WARNING, "streamflow.state"):
        runs = fold_raw([_msg(future), _msg(_v1("r1", "succeeded", versioned=True))])
    assert list(runs) == ["r1"]
    assert "format v99" in caplog.text and "upgrade StreamFlow" in caplog.text


async def _load(dump: dict[str, object], state: Path) -> None:
    """The older worker's log, as it left it, under a fresh state dir."""
    t = make_transport(Settings(state_dir=state, namespace="fmt"))
    await t.start()  # creates the schema
    await t.close()
    db = sqlite3.connect(state / "embedded.db")
    log = dump["log"]
    assert isinstance(log, list)
    db.executemany("INSERT INTO log VALUES (?,?,?,?,?,?)", [
        (r["topic"], r["off"], r["key"].encode("latin-1") if r["key"] is not None else None,
         r["value"].encode("latin-1"), orjson.dumps(r["headers"]), r["ts"]) for r in log])
    offsets = dump["group_offsets"]
    assert isinstance(offsets, list)
    db.executemany("INSERT INTO group_offsets VALUES (?,?,?)",
                   [(o["group"], o["topic"], o["off"]) for o in offsets])
    db.commit()
    db.close()


async def test_a_worker_continues_mid_stream_on_topics_an_older_version_wrote(
        tmp_path: Path) -> None:
    dump = orjson.loads(FIXTURE.read_bytes())
    state = tmp_path / "state"
    state.mkdir()
    await _load(dump, state)
    settings = Settings(state_dir=state, namespace=dump["namespace"], http_port=None,
                        drain_timeout_s=60)
    sink = MemorySink()

    # Orders 10-11 wait unread in the old header format, 0-2 redelivered as they were; the
    # old changelog holds settle's barriers 5-9 half full (orders in, payments not).
    summary = await run_pipeline(pipeline(range(12, 14), range(5, 14), sink), settings)

    t = make_transport(settings)
    await t.start()
    try:
        out = {a.name: Counter(orjson.loads(m.value)["id"] for m in await t.read_topic(
            asset_topic("fmt", a.name))) for a in (priced, settled)}
        runs = validated(await read_ledger(t, runs_topic("fmt")))
    finally:
        await t.close()
    assert out["priced"] == Counter(range(14)), "each order priced once, old and new"
    assert out["settled"] == Counter(range(14)), "old half-full barriers completed once"
    assert sorted(r["id"] for r in sink.rows.values()) == [10, 11, 12, 13]
    assert summary.deduped >= 3  # the redelivered orders, known from the old ledger
    by_stage = Counter((r.stage, r.status) for r in runs.values())
    assert by_stage == {("price", "succeeded"): 14, ("settle", "succeeded"): 14}
