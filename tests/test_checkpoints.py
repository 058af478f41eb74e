"""Local state checkpoints (issue 17): a clean stop writes each trigger partition's state, and
the next start reads it plus the changelog's tail instead of the changelog's history."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from streamflow import AllOf, Settings, run_pipeline
from streamflow.model import OutMessage
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


@contextlib.asynccontextmanager
async def _changelog(settings: Settings) -> AsyncIterator[tuple[Transport, str, set[int]]]:
    """A started transport, a compacted changelog topic and its partitions."""
    t = make_transport(settings)
    await t.start()
    topic = f"{settings.namespace}.state.s"
    try:
        await t.ensure_topics([], compacted=[topic])
        yield t, topic, set(range(await t.partition_count(topic)))
    finally:
        await t.close()


async def test_a_restore_from_a_checkpoint_and_the_tail_equals_one_from_the_start(
    settings: Settings, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cps = Checkpoints(tmp_path / "ckpt")
    async with _changelog(settings) as (t, topic, parts):
        rnd = random.Random(17)
        writer = _store(t, topic, None)
        await _changes(t, writer, rnd, 400, len(parts))

        first = _store(t, topic, cps)
        await first.restore(parts)
        await first.checkpoint(parts)
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
        assert not cps.path(topic, 0).exists(), "a rejected checkpoint is deleted"


async def test_a_checkpoint_leaves_out_what_it_cannot_vouch_for(
    settings: Settings, tmp_path: Path
) -> None:
    cps = Checkpoints(tmp_path / "ckpt")
    async with _changelog(settings) as (t, topic, parts):
        await _changes(t, _store(t, topic, None), random.Random(5), 200, len(parts))
        store = _store(t, topic, cps)
        await store.restore(parts)
        assert store.states

        # Not assigned any more, or revoked while the end offsets are read: left out.
        real_ends = t.end_offsets

        async def revoking(topic: str) -> dict[int, int]:
            await store.forget({0})
            return await real_ends(topic)

        t.end_offsets = revoking  # type: ignore[method-assign]
        await store.checkpoint(parts - {1})
        t.end_offsets = real_ends  # type: ignore[method-assign]
        assert not any(cps.path(topic, p).exists() for p in parts), "nothing to vouch for"

        # A view decided in memory and never published, or holding records it could not
        # read (a newer format), is not checkpointed, and an older checkpoint of it goes.
        again = _store(t, topic, cps)
        await again.restore(parts)
        await again.checkpoint(parts)
        assert all(cps.path(topic, p).exists() for p in parts)
        again.unsure.add(0)
        await t.publish([OutMessage(topic, b'{"v": 99}', b"future", partition=0)])
        newer = _store(t, topic, cps)
        await newer.restore(parts)
        assert 0 in newer.unreadable
        await again.checkpoint(parts)
        assert not cps.path(topic, 0).exists()
        await newer.checkpoint(parts)
        assert not cps.path(topic, 0).exists()

        # A revoke while a checkpoint is folded: nothing of it stays behind.
        await _store(t, topic, None).restore(parts)
        cps.save(topic, 0, 1, [(b"k1", store.message("k1", PartitionState("k1", 0, 1)).value)])
        racing = _store(t, topic, cps)
        racing.prefetch({0})
        await racing.forget({0})
        await asyncio.sleep(0.5)
        assert not racing.states and not racing.loaded(0)


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
