"""The files connector's Parquet format and partitioned, bounded sink layouts, on real files."""

from __future__ import annotations

import os
import time
from datetime import date, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import orjson
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from pydantic import BaseModel
from streamflow_connector_files import read_rows

from streamflow import Asset, Pipeline, Settings, run_pipeline
from streamflow.connectors import ConnectorContext, ConnectorError, SinkRecord, build_sink


class Sale(BaseModel):
    sale_id: str
    day: date
    sold_at: datetime
    amount: Decimal
    quantity: int


def _aged(path: Path) -> None:
    old = time.time() - 5
    os.utime(path, (old, old))


def _landing_parquet(path: Path, days: dict[str, int]) -> list[dict[str, object]]:
    rows: list[dict[str, object]] = [
        {"sale_id": f"{day}-{i}", "day": date.fromisoformat(day),
         "sold_at": datetime.fromisoformat(f"{day}T10:00:{i:02d}"),
         "amount": Decimal(f"{i}.25"), "quantity": i + 1}
        for day, n in days.items() for i in range(n)
    ]
    fields: list[tuple[str, pa.DataType]] = [
        ("sale_id", pa.string()), ("day", pa.date32()), ("sold_at", pa.timestamp("us")),
        ("amount", pa.decimal128(9, 2)), ("quantity", pa.int64())]
    schema = pa.schema(fields)
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), path, row_group_size=3)
    _aged(path)
    return rows


def _pipeline(workdir: Path, **sink: Any) -> Pipeline:
    sales = Asset("sales", Sale, key="sale_id", partition_by="day")
    doubled = Asset("doubled", Sale, key="sale_id", partition_by="day")
    p = Pipeline("parquet-e2e")
    p.source("files", asset=sales, path=workdir / "landing", format="parquet", settle_s=0)

    @p.stage(inputs=[sales], output=doubled)
    def double(s: Sale) -> Sale:
        return s.model_copy(update={"amount": s.amount * 2})

    p.sink("files", asset=doubled, path=workdir / "out", format="parquet", **sink)
    return p


def _read_parquet(files: list[Path]) -> list[dict[str, object]]:
    return [row for f in files for row in pq.read_table(f).to_pylist()]


@pytest.mark.parametrize("mode", ["append", "rewrite", "append-parts"])
async def test_parquet_round_trip_into_partitioned_paths(
    settings: Settings, tmp_path: Path, mode: str
) -> None:
    (tmp_path / "landing").mkdir()
    sent = _landing_parquet(tmp_path / "landing" / "sales.parquet",
                            {"2026-11-01": 4, "2026-11-02": 3})
    template = "{asset}/day={partition}/part"

    summary = await run_pipeline(_pipeline(tmp_path, partition_path=template, mode=mode),
                                 settings)

    assert (summary.records_in, summary.records_out, summary.dead_lettered) == (7, 7, 0)
    out = tmp_path / "out" / "doubled"
    assert sorted(p.name for p in out.iterdir()) == ["day=2026-11-01", "day=2026-11-02"]
    for day in ("2026-11-01", "2026-11-02"):
        files = sorted((out / f"day={day}").iterdir())
        if mode == "rewrite":
            assert [f.name for f in files] == ["part.parquet"]
        else:
            assert files and all(f.name.startswith("part-") and f.suffix == ".parquet"
                                 for f in files)
        raw = _read_parquet(files)
        got = {str(r["sale_id"]): r for r in raw}
        want = {str(r["sale_id"]): r for r in sent if str(r["day"]) == day}
        assert set(got) == set(want) and len(raw) == len(want)
        assert read_rows(out / f"day={day}", format="parquet") == raw
        for sid, r in got.items():
            assert Decimal(str(r["amount"])) == 2 * Decimal(str(want[sid]["amount"]))
            assert r["quantity"] == want[sid]["quantity"] and r["day"] == day
            assert r["_key"] == sid and r["_arrival_id"]
    assert (tmp_path / "landing" / "processed" / "sales.parquet").exists()


async def test_unreadable_parquet_is_quarantined_with_reason(
    settings: Settings, tmp_path: Path
) -> None:
    landing = tmp_path / "landing"
    landing.mkdir()
    (landing / "broken.parquet").write_bytes(b"PAR1 this is not really parquet")
    _aged(landing / "broken.parquet")
    _landing_parquet(landing / "good.parquet", {"2026-11-03": 2})

    summary = await run_pipeline(_pipeline(tmp_path), settings)

    assert (summary.records_in, summary.records_out) == (2, 2)
    reason = (landing / "quarantine" / "broken.parquet.reason.txt").read_text()
    assert "broken.parquet: unreadable Parquet file" in reason
    assert (landing / "quarantine" / "broken.parquet").exists()
    out = tmp_path / "out"
    written = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    assert written and all(p.startswith("doubled/2026-11-03/part-") for p in written), written
    assert len(read_rows(out, format="parquet")) == 2


def _ctx(tmp_path: Path, partition_by: str | None = "day") -> ConnectorContext:
    return ConnectorContext("files-people", "people", str(tmp_path / "state"),
                            partition_by=partition_by)


RECS = [SinkRecord(str(i), f"arr{i}", "2026-11-0" + str(1 + i % 2), {"id": i, "n": f"n{i}"})
        for i in range(6)]


def _jsonl_rows(files: list[Path]) -> list[dict[str, object]]:
    return [orjson.loads(x) for f in files for x in f.read_bytes().splitlines()]


async def test_rewrite_mode_replaces_redelivered_records_and_reloads_after_restart(
    tmp_path: Path,
) -> None:
    cfg = {"path": tmp_path / "out", "partition_path": "{asset}/{partition}/data",
           "mode": "rewrite"}
    sink = build_sink("files", cfg)
    await sink.setup(_ctx(tmp_path))
    for _ in range(2):  # the same records delivered twice
        await sink.write(RECS)
        await sink.flush()
    await sink.stop()
    files = sorted((tmp_path / "out").rglob("*.jsonl"))
    assert [f.relative_to(tmp_path / "out").as_posix() for f in files] == [
        "people/2026-11-01/data.jsonl", "people/2026-11-02/data.jsonl"]
    assert sorted(int(str(r["id"])) for r in _jsonl_rows(files)) == list(range(6))

    again = build_sink("files", cfg)  # a later run updates the files instead of starting over
    await again.setup(_ctx(tmp_path))
    await again.write([SinkRecord("0", "arr0b", "2026-11-01", {"id": 0, "n": "new"})])
    await again.flush()
    await again.stop()
    rows = {str(r["_key"]): r for r in _jsonl_rows(sorted((tmp_path / "out").rglob("*.jsonl")))}
    assert len(rows) == 6 and rows["0"]["n"] == "new" and rows["1"]["n"] == "n1"
    assert not list((tmp_path / "out").rglob("*.tmp"))


async def test_append_parts_replays_rewrite_the_same_part_and_memory_is_bounded(
    tmp_path: Path,
) -> None:
    out = tmp_path / "out"
    sink = build_sink("files", {"path": out, "mode": "append-parts", "max_buffered_rows": 4})
    await sink.setup(_ctx(tmp_path))
    await sink.write(RECS[:2])
    await sink.flush()
    first = {p.name: p.read_bytes() for p in out.iterdir()}
    assert len(first) == 2 and all(n.startswith("people-2026-11-0") for n in first)
    await sink.write(RECS[:2])  # the same batch redelivered: the same part files, rewritten
    await sink.flush()
    assert {p.name: p.read_bytes() for p in out.iterdir()} == first

    await sink.write(RECS[2:])  # 4 rows reach max_buffered_rows: written before flush()
    assert len(list(out.iterdir())) == 4
    await sink.flush()
    await sink.stop()
    assert sorted(int(str(r["id"])) for r in _jsonl_rows(sorted(out.iterdir()))) == list(range(6))


async def test_rewrite_mode_writes_one_file_for_an_asset_without_partition_by(
    tmp_path: Path,
) -> None:
    sink = build_sink("files", {"path": tmp_path / "out", "mode": "rewrite"})
    await sink.setup(_ctx(tmp_path, partition_by=None))  # RECS' partitions are then ignored
    await sink.write(RECS)
    await sink.flush()
    await sink.stop()
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["people.jsonl"]
    assert sorted(int(str(r["id"])) for r in read_rows(tmp_path / "out")) == list(range(6))


@pytest.mark.parametrize(("template", "problem"), [
    ("{asset}-{day}", "may only use {asset} and {partition}"),
    ("/abs/{partition}", "relative path"),
    ("{asset}/../{partition}", "relative path"),
    ("{asset}/{partition}/", "relative path"),
    ("{asset", "invalid template"),
])
def test_bad_partition_path_is_refused_at_build(template: str, problem: str) -> None:
    with pytest.raises(ConnectorError) as err:
        build_sink("files", {"path": "out", "partition_path": template})
    assert "partition_path" in str(err.value) and problem in str(err.value)


@pytest.mark.parametrize(("mode", "name"), [("rewrite", "x.jsonl"), ("append", "x-00001.jsonl")])
async def test_dot_partitions_cannot_escape_the_output_directory(
    tmp_path: Path, mode: str, name: str
) -> None:
    sink = build_sink("files", {"path": tmp_path / "out", "partition_path": "{partition}/x",
                                "mode": mode})
    await sink.setup(_ctx(tmp_path))
    await sink.write([SinkRecord("k", "a", "..", {"id": 1})])
    await sink.flush()
    root = tmp_path / ""
    assert [p.relative_to(root).as_posix() for p in root.rglob("*.jsonl")] == [f"out/__/{name}"]
