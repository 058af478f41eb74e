"""The connector kit (``streamflow.connectors.testing``): its in-memory source and sink, and
the checks catching broken connectors.

The built-in connectors run the kit against their real systems in their own tests
(``connectors/<name>/tests/test_*_kit.py``).
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel
from streamflow_connector_files import read_rows

from streamflow import Asset, Pipeline, Settings, run_pipeline
from streamflow.connectors import Sink, SinkRecord, Source, SourceBatch, SourceRecord, build_sink
from streamflow.connectors.testing import (
    IdleSource,
    MemorySink,
    MemorySource,
    check_sink,
    check_source,
    sample_records,
)

# ------------------------------------------------------------------- the in-memory connectors


async def test_kit_passes_on_the_memory_source(tmp_path: Path) -> None:
    acked: set[str] = set()  # shared across instances: the durable position
    batches = [[{"id": i} for i in range(b, b + 3)] for b in range(0, 9, 3)]
    report = await check_source(lambda: MemorySource(batches, acked=acked), expected_count=9,
                                state_dir=tmp_path / "state")
    assert len(report.first_batch) == 3
    assert len(set(report.record_ids)) == 9


async def test_memory_source_without_a_shared_position_rereads_with_the_same_ids() -> None:
    from streamflow.connectors import ConnectorContext

    batches = [[{"id": 1}, {"id": 2}], [{"id": 1}]]

    async def ids() -> list[str]:
        src = MemorySource(batches)
        await src.setup(ConnectorContext("m", "a", "."))
        out = []
        async for b in src.read():
            out += [r.record_id for r in b.records]
            await src.ack(b)
        assert src.acked == 2
        return out

    first = await ids()
    assert first == await ids()
    assert first[0] == first[2], "the same record gets the same id"
    custom = MemorySource(batches, record_id=lambda r: f"rec-{r['id']}")
    assert [r.record_id async for b in custom.read() for r in b.records] == \
        ["rec-1", "rec-2", "rec-1"]


async def test_kit_passes_on_the_memory_sink(tmp_path: Path) -> None:
    store: dict[str, dict[str, Any]] = {}
    rows = await check_sink(lambda: MemorySink(store), read_back=lambda: list(store.values()),
                            state_dir=tmp_path / "state")
    assert len(rows) == len(sample_records())


def test_the_memory_connectors_implement_the_protocols() -> None:
    assert isinstance(MemorySource([]), Source) and isinstance(IdleSource(), Source)
    assert isinstance(MemorySink(), Sink)


class _Item(BaseModel):
    id: int
    day: str


async def test_a_pipeline_runs_on_memory_connectors(settings: Settings) -> None:
    items = Asset("items", _Item, key="id", partition_by="day")
    sink = MemorySink()
    p = Pipeline("memory")
    p.source(MemorySource([[{"id": 1, "day": "d1"}, {"id": 2, "day": "d2"}],
                           [{"id": 2, "day": "d2"}, {"id": 3, "day": "d1"}]]), asset=items)
    p.sink(sink, asset=items)
    summary = await run_pipeline(p, settings)
    assert summary.records_in >= 3 and summary.dead_lettered == 0
    assert sorted(v["id"] for v in sink.values()) == [1, 2, 3]
    assert {row["_partition"] for row in sink.rows.values()} == {"d1", "d2"}
    assert all(isinstance(r, SinkRecord) for r in sink.written)


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
        return read_rows(out)

    with pytest.raises(AssertionError, match="connector kit: error handling"):
        await check_sink(lambda: build_sink("files", {"path": out}), read_back=files_rows,
                         state_dir=tmp_path, bad_factory=make)  # accepts anything: no error
