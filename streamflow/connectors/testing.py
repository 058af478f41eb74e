"""The connector test kit: in-memory sources and sinks, and checks for connector authors.

In-memory connectors for engine and pipeline tests (a pipeline accepts a ``Source`` or ``Sink``
instance wherever it accepts a connector name)::

    from streamflow.connectors.testing import MemorySink, MemorySource

    sink = MemorySink()
    p.source(MemorySource([[{"id": 1}, {"id": 2}], [{"id": 3}]]), asset=orders)
    p.sink(sink, asset=orders)
    ...                       # after the run: sink.rows, keyed by record key (else arrival id)

Checks that drive a connector the way the engine does and test the properties it relies on::

    from streamflow.connectors.testing import check_sink, check_source

    async def test_my_source(tmp_path):
        await check_source(lambda: MySource(MyConfig(...)), expected_count=10,
                           state_dir=tmp_path / "state", seed=put_ten_records)

    async def test_my_sink(tmp_path):
        await check_sink(lambda: MySink(MyConfig(...)), read_back=rows_in_target,
                         state_dir=tmp_path / "state", bad_factory=lambda: MySink(broken))

A failed property raises ``AssertionError`` whose message starts with ``connector kit:`` and
names the property. Each factory call must return a *new*, configured, not yet set-up object,
as the engine builds one per run: the kit restarts connectors by calling it again.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
from collections.abc import AsyncGenerator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from ._api import ConnectorContext, Sink, SinkRecord, Source, SourceBatch
from ._memory import IdleSource, MemorySink, MemorySource

__all__ = [
    "IdleSource",
    "MemorySink",
    "MemorySource",
    "SourceReport",
    "check_sink",
    "check_source",
    "sample_records",
]

SourceFactory = Callable[[], Source]
SinkFactory = Callable[[], Sink]
Seed = Callable[[], Awaitable[None] | None]
ReadBack = Callable[[], Awaitable[Sequence[dict[str, Any]]] | Sequence[dict[str, Any]]]


@dataclass
class SourceReport:
    """What the kit saw, for further assertions of your own."""

    record_ids: list[str] = field(default_factory=list)
    """Every record id of one full read, in order."""
    first_batch: list[str] = field(default_factory=list)
    """Ids of the batch acked before the restart."""
    rejects: int = 0
    data: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Record data by record id."""


def _fail(prop: str, detail: str) -> AssertionError:
    return AssertionError(f"connector kit: {prop}: {detail}")


async def _maybe(result: Any) -> Any:
    return await result if inspect.isawaitable(result) else result


def _ctx(name: str, asset: str, state_dir: Path | str) -> ConnectorContext:
    return ConnectorContext(name=name, asset=asset, state_dir=str(state_dir))


async def _new_source(factory: SourceFactory, ctx: ConnectorContext) -> Source:
    src = factory()
    if not isinstance(src, Source):
        raise _fail("lifecycle", f"{type(src).__qualname__} does not implement Source "
                    "(setup, read, ack, stop)")
    await src.setup(ctx)
    return src


async def _stop_twice(conn: Source | Sink) -> None:
    await conn.stop()
    try:
        await conn.stop()
    except Exception as e:
        raise _fail("lifecycle", f"a second stop() raised {type(e).__name__}: {e}; stop must "
                    "be idempotent") from e


async def _batches(src: Source, want: int | None, timeout: float
                   ) -> AsyncGenerator[SourceBatch, None]:
    """Non-empty batches until the source ends, or (for an endless one) ``want`` records."""
    it = src.read()
    seen = 0
    try:
        while want is None or seen < want:
            try:
                async with asyncio.timeout(timeout):
                    batch = await anext(it)
            except StopAsyncIteration:
                return
            except TimeoutError:
                raise _fail("read", f"no batch within {timeout:.0f}s after {seen} record(s)"
                            + ("" if want is None else f" of {want}")) from None
            if batch.records or batch.rejects:
                seen += len(batch.records)
                yield batch
    finally:
        aclose = getattr(it, "aclose", None)
        if aclose is not None:  # the engine cancels an endless source the same way
            with contextlib.suppress(Exception):
                await aclose()


async def check_source(
    factory: SourceFactory,
    *,
    expected_count: int,
    state_dir: Path | str,
    seed: Seed | None = None,
    finite: bool = True,
    name: str = "kit-source",
    asset: str = "kit",
    timeout: float = 60.0,
) -> SourceReport:
    """Check a source: lifecycle, deterministic ids, checkpoint and resume.

    ``seed`` puts ``expected_count`` records (``SourceRecord``s, not counting rejects) where the
    source reads from; it is called once, before the first setup. An endless source
    (``finite=False``: it never ends by itself) is read until ``expected_count`` records came.

    1. crash before ack: read the first batch, never ack it, stop twice (idempotent).
    2. re-read: a new instance on the same ``state_dir`` yields those record ids again, then
       ``expected_count`` unique records in all; only its first batch is acked.
    3. resume: a third instance yields exactly the records not acked, none of the acked ones.
    4. (finite) after acking everything, a fourth instance yields nothing.
    """
    ctx = _ctx(name, asset, state_dir)
    if seed is not None:
        await _maybe(seed())
    want = None if finite else expected_count
    unacked = await _read_first_without_ack(factory, ctx, want, timeout)
    if not unacked and expected_count:
        raise _fail("read", f"the source yielded no record, expected {expected_count}")
    report = await _read_all_acking_first(factory, ctx, want, timeout)
    _check_full_read(report, unacked, expected_count)
    await _check_resume(factory, ctx, report, finite, timeout)
    if finite:
        src = await _new_source(factory, ctx)
        leftover = [r.record_id async for b in _batches(src, None, timeout) for r in b.records]
        await _stop_twice(src)
        if leftover:
            raise _fail("checkpoint", f"everything was acked, yet a restart read {leftover[:5]}")
    return report


async def _read_first_without_ack(factory: SourceFactory, ctx: ConnectorContext,
                                  want: int | None, timeout: float) -> list[str]:
    """Step 1: the record ids of the first batch, read and never acked (a crash)."""
    src = await _new_source(factory, ctx)
    unacked: list[str] = []
    async with contextlib.aclosing(_batches(src, want and 1, timeout)) as first:
        async for batch in first:
            unacked = [r.record_id for r in batch.records]
            if unacked:
                break
    await _stop_twice(src)
    return unacked


async def _read_all_acking_first(factory: SourceFactory, ctx: ConnectorContext,
                                 want: int | None, timeout: float) -> SourceReport:
    """Step 2: one full read by a new instance, acking only its first batch."""
    report = SourceReport()
    src = await _new_source(factory, ctx)
    async for batch in _batches(src, want, timeout):
        if not report.first_batch and batch.records:
            report.first_batch = [r.record_id for r in batch.records]
            await src.ack(batch)
        report.rejects += len(batch.rejects)
        for r in batch.records:
            report.record_ids.append(r.record_id)
            report.data[r.record_id] = r.data
    await _stop_twice(src)
    return report


def _check_full_read(report: SourceReport, unacked: list[str], expected_count: int) -> None:
    ids = report.record_ids
    if len(ids) != len(set(ids)):
        dupes = sorted({i for i in ids if ids.count(i) > 1})[:5]
        raise _fail("unique ids", f"record ids repeat within one read: {dupes}")
    missing = [i for i in unacked if i not in set(ids)]
    if missing:
        raise _fail("deterministic ids", f"after a restart without ack, {len(missing)} record "
                    f"id(s) of the unacked batch did not come again (e.g. {missing[0]!r}); "
                    f"got {ids[:5]}...: ids must derive from the data, and a batch is only "
                    "done once acked")
    if len(ids) != expected_count:
        raise _fail("count", f"one full read gave {len(ids)} records, expected "
                    f"{expected_count} (ids {ids[:5]}...)")


async def _check_resume(factory: SourceFactory, ctx: ConnectorContext, report: SourceReport,
                        finite: bool, timeout: float) -> None:
    """Step 3: a restart yields exactly the records not acked in step 2, acking them all."""
    acked = set(report.first_batch)
    rest = [i for i in report.record_ids if i not in acked]
    src = await _new_source(factory, ctx)
    again: list[str] = []
    async for batch in _batches(src, None if finite else len(rest), timeout):
        again.extend(r.record_id for r in batch.records)
        await src.ack(batch)
    await _stop_twice(src)
    if acked & set(again):
        raise _fail("checkpoint", f"after ack and restart, acked records came again: "
                    f"{sorted(acked & set(again))[:5]}; persist the position in ack()")
    if sorted(again) != sorted(rest):
        lost = sorted(set(rest) - set(again))[:5]
        raise _fail("resume", f"after a restart, expected the {len(rest)} unacked records, got "
                    f"{len(again)}; missing {lost}")


def sample_records(n: int = 6, partitions: Sequence[str] = ("2026-11-01", "2026-11-02"),
                   ) -> list[SinkRecord]:
    """Records a sink test can write: keyed ones across partitions, and one without a key."""
    out = [SinkRecord(key=f"k{i}", arrival_id=f"arr-{i:04d}", partition=partitions[i % 2],
                      value={"id": i, "name": f"name-{i}", "amount": f"{i}.50"})
           for i in range(n - 1)]
    out.append(SinkRecord(key=None, arrival_id="arr-nokey", partition=partitions[0],
                          value={"id": n - 1, "name": "no key", "amount": "0.00"}))
    return out


def _canon(rows: Sequence[dict[str, Any]]) -> list[bytes]:
    return sorted(orjson.dumps(r, option=orjson.OPT_SORT_KEYS, default=str) for r in rows)


async def _new_sink(factory: SinkFactory, ctx: ConnectorContext) -> Sink:
    snk = factory()
    if not isinstance(snk, Sink):
        raise _fail("lifecycle", f"{type(snk).__qualname__} does not implement Sink "
                    "(location, setup, write, flush, stop)")
    if not isinstance(snk.location, str) or not snk.location:
        raise _fail("lifecycle", "a sink's location must be a non-empty str (set in __init__)")
    await snk.setup(ctx)
    return snk


async def check_sink(
    factory: SinkFactory,
    *,
    read_back: ReadBack,
    state_dir: Path | str,
    records: Sequence[SinkRecord] | None = None,
    bad_factory: SinkFactory | None = None,
    name: str = "kit-sink",
    asset: str = "kit",
    timeout: float = 60.0,
) -> list[dict[str, Any]]:
    """Check a sink: lifecycle, durability at flush, idempotent redelivery, clear errors.

    ``read_back`` returns what the target holds now, one row per stored record (from a fresh
    connection: what a reader would see). ``records`` defaults to ``sample_records()``.

    1. setup → write → flush → stop (twice): one row per record key (else arrival id).
    2. a new instance writes the same records again, and a part of them once more in the same
       instance: ``read_back`` equals the first result.
    3. ``bad_factory`` (a sink with a wrong config, e.g. an unreachable host): setup, write or
       flush raises an exception with a message, within ``timeout``, instead of hanging.
    Returns the rows of step 1.
    """
    recs = list(records if records is not None else sample_records())
    ctx = _ctx(name, asset, state_dir)
    distinct = len({r.key or r.arrival_id for r in recs})

    async def deliver(batches: Sequence[Sequence[SinkRecord]]) -> None:
        snk = await _new_sink(factory, ctx)
        try:
            async with asyncio.timeout(timeout):
                for b in batches:
                    await snk.write(b)
                    await snk.flush()
        finally:
            await _stop_twice(snk)

    await deliver([recs])
    once = list(await _maybe(read_back()))
    if len(once) != distinct:
        raise _fail("write", f"after writing {len(recs)} records ({distinct} distinct keys) "
                    f"and flush, read_back returned {len(once)} rows")
    await deliver([recs, recs[: max(1, len(recs) // 2)]])
    twice = list(await _maybe(read_back()))
    if _canon(twice) != _canon(once):
        raise _fail("idempotent redelivery", f"writing the same records again changed the "
                    f"target: {len(once)} rows before, {len(twice)} after; write by key "
                    "(record.key, else record.arrival_id)")

    if bad_factory is not None:
        await _check_bad(bad_factory, ctx, recs, timeout)
    return once


async def _check_bad(factory: SinkFactory, ctx: ConnectorContext, recs: list[SinkRecord],
                     timeout: float) -> None:
    snk = factory()
    error: BaseException | None = None
    try:
        async with asyncio.timeout(timeout):
            await snk.setup(ctx)
            await snk.write(recs)
            await snk.flush()
    except TimeoutError:
        raise _fail("error handling", f"a misconfigured sink neither failed nor finished within "
                    f"{timeout:.0f}s; give up after bounded retries and raise") from None
    except Exception as e:
        error = e
    finally:
        with contextlib.suppress(Exception):
            await snk.stop()
    if error is None:
        raise _fail("error handling", "a misconfigured sink accepted the records without error")
    if not str(error).strip():
        raise _fail("error handling", f"{type(error).__name__} raised without a message")
