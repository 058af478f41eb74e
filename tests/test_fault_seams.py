"""The neutral seams product code keeps for fault injection (tests/faults.py): each committed
exactly-once transaction passes through ``BEFORE_COMMIT`` with what it produced, on both
transports, so the chaos and crash tests kill a worker exactly there."""

from __future__ import annotations

from pydantic import BaseModel

from streamflow import Asset, Pipeline, Settings, run_pipeline
from streamflow.connectors.testing import MemorySink, MemorySource

from .faults import Faults


class Row(BaseModel):
    id: int


rows = Asset("rows", Row, key="id")
copies = Asset("copies", Row, key="id")


async def test_every_exactly_once_commit_passes_the_before_commit_seam(
        settings: Settings, faults: Faults) -> None:
    produced: list[int] = []
    faults.before_commit(produced.append)
    p = Pipeline("seams")
    p.source(MemorySource([[{"id": i} for i in range(20)]]), asset=rows)
    p.stage(inputs=[rows], output=copies, name="copy")(lambda r: r)
    sink = MemorySink()
    p.sink(sink, asset=copies)

    summary = await run_pipeline(p, settings.model_copy(update={"exactly_once": True}))

    assert summary.records_out == 20 and len(sink.rows) == 20
    # The stage's transactions produced its 20 outputs and at least one ledger message (one
    # per handled batch and input partition; and maybe empty commits, which hooks ignore).
    assert sum(produced) >= 21
    assert all(n >= 0 for n in produced)
