"""The files sink's default ``append`` mode: parts per partition, rolled by size or age, memory
bounded to a batch, and ``read_rows`` giving each key once after redelivery or a torn write."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path

import orjson
import pytest
from pydantic import BaseModel
from streamflow_connector_files import FilesSink, FilesSinkConfig, _parts, read_rows

from streamflow import Asset, Pipeline, Settings, run_pipeline
from streamflow.connectors import ConnectorContext, SinkRecord, build_sink


def _ctx(tmp_path: Path, partition_by: str | None = None) -> ConnectorContext:
    return ConnectorContext("files-orders", "orders", str(tmp_path / "state"),
                            partition_by=partition_by)


def _recs(n: int, start: int = 0, tag: str = "v1") -> list[SinkRecord]:
    """Keyed records, each its own engine partition (as for an asset without partition_by)."""
    return [SinkRecord(f"o{i}", f"arr-{i}-{tag}", f"o{i}", {"id": i, "tag": tag})
            for i in range(start, start + n)]


def _files(root: Path) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())


def _raw(path: Path) -> list[dict[str, object]]:
    return [orjson.loads(x) for x in path.read_bytes().splitlines()]


async def _deliver(sink: FilesSink | object, *batches: list[SinkRecord]) -> None:
    for b in batches:
        await sink.write(b)  # type: ignore[attr-defined]
        await sink.flush()  # type: ignore[attr-defined]


async def test_an_asset_without_partition_by_gets_one_part_series_not_a_file_per_key(
    tmp_path: Path,
) -> None:
    out = tmp_path / "out"
    sink = build_sink("files", {"path": out})
    await sink.setup(_ctx(tmp_path))
    await _deliver(sink, _recs(3), _recs(4, start=3))
    await sink.stop()
    assert _files(out) == ["orders/part-00001.jsonl"]
    rows = _raw(out / "orders/part-00001.jsonl")
    assert [r["id"] for r in rows] == list(range(7))
    assert all(r["_key"] == f"o{r['id']}" and r["_arrival_id"] for r in rows)


async def test_a_partitioned_asset_gets_one_part_series_per_partition(tmp_path: Path) -> None:
    out = tmp_path / "out"
    sink = build_sink("files", {"path": out})
    await sink.setup(_ctx(tmp_path, partition_by="day"))
    await _deliver(sink, [SinkRecord(f"o{i}", f"a{i}", f"2026-11-0{1 + i % 2}", {"id": i})
                          for i in range(5)])
    await sink.stop()
    assert _files(out) == ["orders/2026-11-01/part-00001.jsonl",
                           "orders/2026-11-02/part-00001.jsonl"]
    assert sorted(int(str(r["id"])) for r in read_rows(out / "orders/2026-11-02")) == [1, 3]


class Order(BaseModel):
    order_id: str
    day: str


@pytest.mark.parametrize("settings", ["embedded"], indirect=True)
async def test_the_engine_tells_the_sink_whether_the_asset_is_partitioned(
    settings: Settings, tmp_path: Path
) -> None:
    landing, out = tmp_path / "landing", tmp_path / "out"
    landing.mkdir()
    (landing / "orders.jsonl").write_bytes(b"".join(
        b'{"order_id": "o%d", "day": "2026-11-0%d"}\n' % (i, 1 + i % 2) for i in range(6)))
    os.utime(landing / "orders.jsonl", (0, 0))
    orders = Asset("orders", Order, key="order_id")
    by_day = Asset("by_day", Order, key="order_id", partition_by="day")
    p = Pipeline("shop")
    p.source("files", asset=orders, path=landing, format="jsonl", settle_s=0)

    @p.stage(inputs=[orders], output=by_day)
    def same(o: Order) -> Order:
        return o

    p.sink("files", asset=orders, name="orders-out", path=out)
    p.sink("files", asset=by_day, name="by-day-out", path=out)

    summary = await run_pipeline(p, settings)

    assert summary.records_out == 12
    assert {f.rsplit("-", 1)[0] for f in _files(out)} == {
        "orders/part", "by_day/2026-11-01/part", "by_day/2026-11-02/part"}
    assert sorted(str(r["order_id"]) for r in read_rows(out / "orders")) == [
        f"o{i}" for i in range(6)]
    assert sorted(str(r["order_id"]) for r in read_rows(out / "by_day/2026-11-02")) == [
        "o1", "o3", "o5"]


async def test_parts_roll_by_size(tmp_path: Path) -> None:
    out = tmp_path / "out"
    row_bytes = len(orjson.dumps({"id": 0, "tag": "v1", "_key": "o0", "_arrival_id": "arr-0-v1"}))
    sink = build_sink("files", {"path": out, "roll_bytes": 3 * row_bytes + 3})
    await sink.setup(_ctx(tmp_path))
    await _deliver(sink, *[_recs(1, start=i) for i in range(7)])
    await _deliver(sink, _recs(5, start=7))  # a batch bigger than roll_bytes stays one write
    await sink.stop()
    parts = _files(out)
    assert parts == [f"orders/part-0000{n}.jsonl" for n in (1, 2, 3, 4)]
    assert [len(_raw(out / p)) for p in parts] == [3, 3, 1, 5]
    assert all((out / p).stat().st_size <= 3 * row_bytes + 3 for p in parts[:3])
    assert [r["id"] for r in read_rows(out)] == list(range(12))


async def test_parts_roll_by_age_at_the_next_flush(tmp_path: Path) -> None:
    now = [100.0]
    out = tmp_path / "out"
    sink = FilesSink(FilesSinkConfig(path=out, roll_s=60), clock=lambda: now[0])
    await sink.setup(_ctx(tmp_path))
    await _deliver(sink, _recs(1), _recs(1, start=1))
    now[0] += 59.9
    await _deliver(sink, _recs(1, start=2))
    assert _files(out) == ["orders/part-00001.jsonl"]
    now[0] += 0.1  # the part is 60 s old: the next flush starts a new one
    await _deliver(sink, _recs(1, start=3))
    await sink.stop()
    assert _files(out) == ["orders/part-00001.jsonl", "orders/part-00002.jsonl"]
    assert [len(_raw(out / p)) for p in _files(out)] == [3, 1]


async def test_memory_holds_one_batch_at_most(tmp_path: Path) -> None:
    out = tmp_path / "out"
    sink = FilesSink(FilesSinkConfig(path=out, max_buffered_rows=4))
    await sink.setup(_ctx(tmp_path))
    await sink.write(_recs(3))
    assert sink.held_rows == 3
    await sink.flush()
    assert sink.held_rows == 0, "nothing is kept once a batch is on disk"
    await sink.write(_recs(10, start=3))  # flushed at 4 rows waiting: backpressure
    assert sink.held_rows == 2
    await sink.stop()
    assert sink.held_rows == 0 and len(read_rows(out)) == 13

    rewrite = FilesSink(FilesSinkConfig(path=tmp_path / "rw", mode="rewrite"))
    await rewrite.setup(_ctx(tmp_path))
    await _deliver(rewrite, _recs(13))
    assert rewrite.held_rows == 13, "rewrite keeps every row: the cost the docs state"


async def test_redelivery_appends_again_and_the_reader_keeps_the_latest_row_per_key(
    tmp_path: Path,
) -> None:
    out = tmp_path / "out"
    first = build_sink("files", {"path": out})
    await first.setup(_ctx(tmp_path))
    await _deliver(first, _recs(4))
    # A crash after the flush and before the commit: the next run gets the batch again, then
    # a newer version of o1 and a keyless record twice.
    second = build_sink("files", {"path": out})
    await second.setup(_ctx(tmp_path))
    nokey = SinkRecord(None, "arr-nokey", "default", {"id": 99, "tag": "nokey"})
    await _deliver(second, _recs(4), [*_recs(1, start=1, tag="v2"), nokey], [nokey])
    await second.stop()

    assert _files(out) == ["orders/part-00001.jsonl", "orders/part-00002.jsonl"]
    assert len(_raw(out / "orders/part-00002.jsonl")) == 7, "the copies are on disk"
    rows = read_rows(out)
    assert sorted((r["_key"] or "-", r["tag"]) for r in rows) == [
        ("-", "nokey"), ("o0", "v1"), ("o1", "v2"), ("o2", "v1"), ("o3", "v1")]


async def test_a_torn_last_line_is_skipped_and_never_appended_after(tmp_path: Path) -> None:
    out = tmp_path / "out"
    sink = build_sink("files", {"path": out})
    await sink.setup(_ctx(tmp_path))
    await _deliver(sink, _recs(3))
    part = out / "orders/part-00001.jsonl"
    with part.open("ab") as fh:  # SIGKILL in the middle of an append
        fh.write(b'{"id": 3, "tag": "v1", "_key": "o')
    assert [r["id"] for r in read_rows(out)] == [0, 1, 2]

    again = build_sink("files", {"path": out})  # the restarted worker
    await again.setup(_ctx(tmp_path))
    await _deliver(again, _recs(2, start=3))
    await again.stop()
    assert part.read_bytes().endswith(b'"_key": "o'), "the torn part is left as it was"
    assert _files(out) == ["orders/part-00001.jsonl", "orders/part-00002.jsonl"]
    assert [r["id"] for r in read_rows(out)] == [0, 1, 2, 3, 4]


async def test_a_failed_write_abandons_its_part(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "out"
    sink = build_sink("files", {"path": out})
    await sink.setup(_ctx(tmp_path))
    await _deliver(sink, _recs(2))

    def full(fd: int) -> None:
        raise OSError(28, "No space left on device")

    with monkeypatch.context() as m:
        m.setattr(os, "fsync", full)
        with pytest.raises(OSError, match="No space"):
            await _deliver(sink, _recs(2, start=2))
    await _deliver(sink, _recs(2, start=2))  # the redelivered batch goes to a new part
    await sink.stop()
    assert [len(_raw(out / p)) for p in _files(out)] == [2, 2]
    assert [r["id"] for r in read_rows(out)] == [0, 1, 2, 3]


async def test_a_later_write_by_another_worker_lands_in_a_later_part(tmp_path: Path) -> None:
    out = tmp_path / "out"
    a, b = build_sink("files", {"path": out}), build_sink("files", {"path": out})
    await a.setup(_ctx(tmp_path))
    await b.setup(_ctx(tmp_path))
    await _deliver(a, _recs(1, tag="a1"))
    await _deliver(b, _recs(1, tag="b1"))  # o0 moved to worker b (a rebalance)...
    await _deliver(a, _recs(1, tag="a2"))  # ...and back to a, whose part is older than b's
    await a.stop()
    await b.stop()
    assert _files(out) == [f"orders/part-0000{n}.jsonl" for n in (1, 2, 3)]
    assert [r["tag"] for r in read_rows(out)] == ["a2"]


async def test_parquet_cannot_append_so_each_flush_is_a_new_part(tmp_path: Path) -> None:
    out = tmp_path / "out"
    sink = build_sink("files", {"path": out, "format": "parquet"})
    await sink.setup(_ctx(tmp_path))
    await _deliver(sink, _recs(2), _recs(2), _recs(1, start=1, tag="v2"))
    await sink.stop()
    assert _files(out) == [f"orders/part-0000{n}.parquet" for n in (1, 2, 3)]
    rows = read_rows(out, format="parquet")
    assert sorted((r["_key"], r["tag"]) for r in rows) == [("o0", "v1"), ("o1", "v2")]


async def test_a_writer_remembers_few_series_so_many_partitions_stay_cheap(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_parts, "OPEN_SERIES", 2)
    out = tmp_path / "out"
    sink = build_sink("files", {"path": out})
    await sink.setup(_ctx(tmp_path, partition_by="id"))
    await _deliver(sink, *[[SinkRecord(f"o{i}", f"a{i}", p, {"id": i})]
                           for i, p in enumerate("abcab")])
    await sink.stop()
    # a and b fell out once c was written: their next rows start new parts, never reopened.
    assert _files(out) == ["orders/a/part-00001.jsonl", "orders/a/part-00002.jsonl",
                           "orders/b/part-00001.jsonl", "orders/b/part-00002.jsonl",
                           "orders/c/part-00001.jsonl"]
    assert len(read_rows(out)) == 5


WRITER = """
import asyncio, sys
from pathlib import Path
from streamflow.connectors import ConnectorContext, SinkRecord, build_sink

async def main() -> None:
    sink = build_sink("files", {"path": Path(sys.argv[1]), "roll_bytes": 1 << 40})
    await sink.setup(ConnectorContext("w", "orders", sys.argv[1]))
    pad = "x" * 2000
    for b in range(10_000):
        await sink.write([SinkRecord(f"o{b}-{i}", f"a{b}-{i}", "p", {"pad": pad})
                          for i in range(2000)])
        await sink.flush()
        print(b, flush=True)

asyncio.run(main())
"""


@pytest.mark.timeout(60)
async def test_sigkill_while_appending_leaves_output_the_reader_and_a_restart_handle(
    tmp_path: Path,
) -> None:
    out = tmp_path / "out"
    proc = await asyncio.create_subprocess_exec(sys.executable, "-c", WRITER, str(out),
                                                stdout=asyncio.subprocess.PIPE)
    assert proc.stdout is not None
    await proc.stdout.readline()  # one batch (4 MB) is on disk; the next is being written
    await asyncio.sleep(0.2)
    proc.send_signal(signal.SIGKILL)  # often mid-write: the part then ends in a torn line
    await proc.wait()

    rows = read_rows(out)
    assert len(rows) >= 2000 and all(r["pad"] == "x" * 2000 for r in rows)
    after = build_sink("files", {"path": out})
    await after.setup(_ctx(tmp_path))
    await _deliver(after, _recs(2))
    await after.stop()
    assert _files(out) == ["orders/part-00001.jsonl", "orders/part-00002.jsonl"]
    assert len(read_rows(out)) == len(rows) + 2
