"""Property-based, end to end on both transports: any interleaving and duplication of the
inputs across batches and sources fires each complete partition exactly once."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from streamflow import AllOf, Settings, run_pipeline
from streamflow.ops import list_runs

from .test_barrier import barrier_pipeline, rate, sale

DAYS = ["d1", "d2", "d3"]

plans = st.tuples(
    st.lists(st.sampled_from(DAYS), min_size=1, max_size=8),   # sale days, repeats = duplicates
    st.lists(st.sampled_from(DAYS), min_size=1, max_size=8),   # rate days
    st.integers(1, 4),                                          # batch size
)


def batches(rows: list[dict[str, object]], size: int) -> list[list[dict[str, object]]]:
    return [rows[i:i + size] for i in range(0, len(rows), size)]


def check(base: Settings, tmp_path: Path, sale_days: list[str], rate_days: list[str],
          size: int) -> None:
    s = base.model_copy(update={"namespace": "p" + uuid.uuid4().hex[:10],
                                "state_dir": tmp_path / uuid.uuid4().hex})
    day_ids = {d: i for i, d in enumerate(DAYS, start=1)}
    sales_rows = [sale(day_ids[d], d) for d in sale_days]
    rate_rows = [rate(d) for d in rate_days]
    out = tmp_path / uuid.uuid4().hex
    summary = asyncio.run(run_pipeline(barrier_pipeline(
        batches(sales_rows, size), batches(rate_rows, size), out, AllOf()), s))
    complete = sorted(set(sale_days) & set(rate_days))
    runs = asyncio.run(list_runs(s))
    assert sorted(r.partition for r in runs) == complete
    assert summary.runs == len(complete)


FIXTURES_OK = [HealthCheck.function_scoped_fixture]  # each example makes its own namespace


@settings(max_examples=12, deadline=None, suppress_health_check=FIXTURES_OK)
@given(plan=plans)
def test_embedded(plan: tuple[list[str], list[str], int], tmp_path: Path) -> None:
    check(Settings(partitions=2), tmp_path, *plan)


@settings(max_examples=4, deadline=None, suppress_health_check=FIXTURES_OK)
@given(plan=plans)
def test_kafka(plan: tuple[list[str], list[str], int], tmp_path: Path,
               kafka_bootstrap: str) -> None:
    check(Settings(kafka_bootstrap=kafka_bootstrap, partitions=2), tmp_path, *plan)
