"""Local state checkpoints (issue 17): a clean stop writes each trigger partition's state, and
the next start reads it plus the changelog's tail instead of the changelog's history."""

from __future__ import annotations

import logging
import random
from pathlib import Path
from typing import Any

import pytest

from streamflow import AllOf, Settings, run_pipeline
from streamflow.state import Checkpoints
from streamflow.transports import Transport, make_transport
from streamflow.triggers._state import PartitionState, Slot
from streamflow.triggers._store import PartitionBook, TriggerStore

from .test_barrier import Out, barrier_pipeline, out_rows, rate, sale

pytestmark = pytest.mark.timeout(180)


def test_a_checkpoint_reads_back_and_a_damaged_or_old_one_is_ignored(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cps = Checkpoints.under(tmp_path, "ns", "127.0.0.1:9092")
    records = [(b"k%d" % i, b"v" * i) for i in range(7000)] + [(b"\x00\xff", b"")]
    cps.save("ns.state.s", 1, 123, records)
    snap = cps.load("ns.state.s", 1)
    assert snap is not None and snap.offset == 123 and snap.records == records
    chunks = list(snap.chunks("ns.state.s", 1))
    assert [len(c) for c in chunks] == [5000, 2001]
    assert chunks[0][3].key == b"k3" and chunks[0][3].value == b"vvv"
    assert cps.load("ns.state.s", 0) is None, "another partition has none"
    assert Checkpoints.under(tmp_path, "ns", None).load("ns.state.s", 1) is None, \
        "the embedded log's checkpoints are not a Kafka cluster's"

    path = cps.path("ns.state.s", 1)
    path.write_bytes(path.read_bytes()[:-5])  # a partial file
    with caplog.at_level(logging.WARNING, logger="streamflow.state"):
        assert cps.load("ns.state.s", 1) is None
    assert "is damaged (length or CRC mismatch" in caplog.text

    cps.save("ns.state.s", 1, 5, records[:3])
    path.rename(cps.path("ns.state.s", 2))  # a file under another partition's name
    assert cps.load("ns.state.s", 2) is None
    cps.save("ns.state.s", 1, 5, records[:3])
    assert Checkpoints(cps.root, max_age_s=0.0).load("ns.state.s", 1) is None, "too old"


def _store(t: Transport, topic: str, cps: Checkpoints | None) -> TriggerStore:
    def settled(partition: int, book: PartitionBook) -> None:
        pass

    store = TriggerStore(t, topic, "s", settled)
    store.checkpoints = cps
    return store


def _view(store: TriggerStore) -> dict[str, Any]:
    return {"states": {k: s.to_json() for k, s in store.states.items()},
            "books": {p: (b.wm, b.wms, b.marked) for p, b in store.books.items()}}


async def _changes(t: Transport, store: TriggerStore, rnd: random.Random, n: int,
                   partitions: int) -> None:
    """Random barrier states, windows with records of their own, retirements (a window's with
    its records, as ``retire`` writes them) and marks; a key keeps to one partition."""
    out = []
    for i in range(n):
        k = rnd.randrange(40)
        p, key, kind = k % partitions, f"k{k}", rnd.random()
        if kind < 0.1:
            book = store.book(p)
            book.wm, book.pos = i, {"in": i}
            out.append(store.mark(p))
        elif k < 20:  # a barrier: one record, slots inline
            st = PartitionState(key, p, i, {"a": Slot(f"id{i}", 1, b'{"x":%d}' % i, [])})
            out.append(store.tombstone(key, p) if kind < 0.3 else store.message(key, st))
        elif kind < 0.3:  # a window retired: its header and every record
            out += [store.drop_slot(key, f"s{j}", p) for j in range(3)]
            out.append(store.tombstone(key, p))
        else:  # a window: its header, and one of its records added or replaced
            st = PartitionState(key, p, i, window_start_ms=60_000 * (k % 5), max_event_ms=i)
            out.append(store.header(key, st))
            out.append(store.slot(key, f"s{rnd.randrange(3)}",
                                  Slot(f"w{i}", 1, b"{}", [], "r"), p))
    await t.publish(out)


async def test_a_restore_from_a_checkpoint_and_the_tail_equals_one_from_the_start(
    settings: Settings, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    t = make_transport(settings)
    await t.start()
    topic = f"{settings.namespace}.state.s"
    cps = Checkpoints(tmp_path / "ckpt")
    try:
        await t.ensure_topics([], compacted=[topic])
        parts = set(range(await t.partition_count(topic)))
        rnd = random.Random(17)
        writer = _store(t, topic, None)
        await _changes(t, writer, rnd, 400, len(parts))

        first = _store(t, topic, cps)
        await first.restore(parts)
        await first.checkpoint()
        assert all(cps.path(topic, p).exists() for p in parts)

        await _changes(t, writer, rnd, 300, len(parts))  # the tail: another owner's changes, say
        with caplog.at_level(logging.INFO, logger="streamflow.state"):
            from_checkpoint = _store(t, topic, cps)
            await from_checkpoint.restore(parts)
        assert "from a checkpoint at offset" in caplog.text
        from_start = _store(t, topic, None)
        await from_start.restore(parts)
        assert _view(from_checkpoint) == _view(from_start)
        assert from_start.states, "the comparison has something in it"

        # A checkpoint past the changelog's end (the topic was created again) is not used.
        cps.save(topic, 0, 10**9, [(b"k99", b"{}")])
        with caplog.at_level(logging.WARNING, logger="streamflow.state"):
            recreated = _store(t, topic, cps)
            await recreated.restore(parts)
        assert "past the changelog's end" in caplog.text
        assert _view(recreated) == _view(from_start)
    finally:
        await t.close()


async def test_a_restart_restores_barriers_from_the_checkpoint_plus_what_came_after(
    settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    out: Out = {}
    await _run(settings, [[sale(1, "d1"), sale(2, "d2")]], [], out)
    assert _checkpoint_files(settings), "a clean stop checkpoints the barrier's partitions"

    # A worker that writes no checkpoint (as one that crashed): its changes are the tail.
    unchecked = settings.model_copy(update={"state_checkpoints": False})
    assert (await _run(unchecked, [[sale(3, "d3")]], [[rate("d1")]], out)) == 1

    with caplog.at_level(logging.INFO, logger="streamflow.state"):
        assert (await _run(settings, [], [[rate("d2"), rate("d3"), rate("d1")]], out)) == 2
    assert "from a checkpoint at offset" in caplog.text
    assert sorted(out_rows(out)) == ["d1", "d2", "d3"], "each day fired once"


async def _run(settings: Settings, sales: list[list[dict[str, object]]],
               rates: list[list[dict[str, object]]], out: Out) -> int:
    summary = await run_pipeline(barrier_pipeline(sales, rates, out, AllOf()), settings)
    return summary.runs


def _checkpoint_files(settings: Settings) -> list[Path]:
    return list(Path(settings.state_dir).rglob("*.ckpt"))
