"""The lean input lanes (``engine/_each.py``, ``engine/_triggered.py``) write exactly what the
general per-record path writes: the same outputs (values, keys, headers, partitions, ids), run
ledger, changelog and dead letters, and user code runs in the same context. Each pipeline runs
twice on the embedded log, once with the lean lanes switched off."""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path
from typing import Any

import orjson
import pytest
from opentelemetry import trace
from pydantic import BaseModel

import streamflow.engine._stage as stage_module
from streamflow import AllOf, AnyOf, Asset, Inputs, OnEach, Pipeline, Settings, run_pipeline
from streamflow.model import Message

from .helpers import memory_source, read_topic
from .test_barrier import Rate, Sale

pytestmark = pytest.mark.timeout(120)


class Report(BaseModel):
    day: str
    total_usd: float


class DetailedReport(Report):
    """A subclass of the output contract: its own fields are written, as on the general path."""

    note: str = "detailed"


SALES = Asset("sales", Sale, key="id", partition_by="day")
RATES = Asset("rates", Rate, key="id", partition_by="day")
REPORTS = Asset("reports", Report, key="day", partition_by="day")
DAYS = [f"d{i}" for i in range(1, 7)]
TRACE_IDS: list[int] = []


async def report(inputs: Inputs) -> Report:
    sale, rate = inputs["sales"], inputs.get("rates")
    assert isinstance(sale, Sale)
    await asyncio.sleep(0)
    TRACE_IDS.append(trace.get_current_span().get_span_context().trace_id)
    if sale.id == 3:
        raise ValueError("no report for sale 3")
    usd = rate.usd if isinstance(rate, Rate) else 1.0
    cls = DetailedReport if sale.id % 2 else Report
    return cls(day=inputs.partition, total_usd=round(sale.amount * usd, 2))


async def each(sale: Sale) -> Report:
    await asyncio.sleep(0)
    TRACE_IDS.append(trace.get_current_span().get_span_context().trace_id)
    if sale.id == 3:
        raise ValueError("no report for sale 3")
    cls = DetailedReport if sale.id % 2 else Report
    return cls(day=sale.day, total_usd=sale.amount)


def _pipeline(trigger: Any) -> Pipeline:
    p = Pipeline("lean")
    sales = [[{"id": i + 1, "day": d, "amount": 1.0 * i} for i, d in enumerate(DAYS)],
             [{"id": 1, "day": "d1", "amount": 0.0}, {"id": 2, "day": "d2", "amount": 1.0}],
             [{"id": "bad", "day": "d3", "amount": "x"}]]
    p.source(memory_source(sales), asset=SALES, name="s")
    if isinstance(trigger, OnEach):
        p.stage(inputs=[SALES], output=REPORTS, name="rep")(each)
        return p
    p.source(memory_source([[{"id": f"r{d}", "day": d, "usd": 2.0} for d in DAYS]]),
             asset=RATES, name="r")
    p.stage(inputs=[SALES, RATES], output=REPORTS, name="rep", trigger=trigger)(report)
    return p


def _norm(msgs: list[Message]) -> list[str]:
    """Each message with its times, tracebacks and random keys blanked."""
    out = []
    for m in msgs:
        try:
            value: Any = orjson.loads(m.value) if m.value else None
        except orjson.JSONDecodeError:
            value = m.value.decode()
        text = json.dumps([m.partition, (m.key or b"").decode(), value,
                           [[k, v.decode("latin-1")] for k, v in m.headers]],
                          sort_keys=True, default=str)
        # Times, in JSON and in JSON inside strings (a planned run's payload).
        text = re.sub(r'((?:_ms|sf-event-time-ms)[\\"]*[,:] ?[\\"]*)\d+', r'\g<1>0', text)
        text = re.sub(r'"batch-[0-9a-f]+"', '"batch"', text)  # a ledger batch's random key
        text = re.sub(r'"traceback": "(?:[^"\\]|\\.)*"', '"traceback": ""', text)
        out.append(text)
    return sorted(out)


async def _run(tmp: Path, trigger: Any, lean: bool,
               monkeypatch: pytest.MonkeyPatch) -> tuple[Any, dict[str, list[str]]]:
    if not lean:
        monkeypatch.setattr(stage_module, "lean", lambda st: False)
        monkeypatch.setattr(stage_module, "lean_triggered", lambda st: False)
    settings = Settings(state_dir=tmp / ("lean" if lean else "general"), namespace="ns",
                        partitions=2, http_port=None)
    summary = await run_pipeline(_pipeline(trigger), settings)
    monkeypatch.undo()
    topics = {}
    for t in ("ns.reports", "ns.runs", "ns.runs.done", "ns.state.rep", "ns.dead-letters"):
        topics[t] = _norm(await read_topic(settings, t))
    return summary, topics


@pytest.mark.parametrize("trigger", [OnEach(), AllOf(), AnyOf()], ids=["each", "allof", "anyof"])
async def test_the_lean_lanes_write_what_the_general_path_writes(
        tmp_path: Path, trigger: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    lean_summary, lean = await _run(tmp_path, trigger, True, monkeypatch)
    general_summary, general = await _run(tmp_path, trigger, False, monkeypatch)
    assert lean_summary == general_summary
    assert lean["ns.reports"], "the pipeline wrote no report"
    assert any('"note": "detailed"' in r for r in lean["ns.reports"])
    assert lean["ns.dead-letters"], "the failing run and the bad record were not dead-lettered"
    for topic, records in lean.items():
        assert records == general[topic], topic


async def test_async_stages_run_in_their_records_trace_context(
        tmp_path: Path, jaeger: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    """An unsampled record's trace id is current in the stage body, after its first await
    too: the lean lanes once awaited the coroutine outside the run's context."""
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", jaeger["otlp_http"])
    monkeypatch.setenv("OTEL_SERVICE_NAME", "sf-test-lean-lanes")
    monkeypatch.setenv("OTEL_TRACES_SAMPLER", "parentbased_traceidratio")
    monkeypatch.setenv("OTEL_TRACES_SAMPLER_ARG", "0")
    for trigger in (OnEach(), AllOf()):
        TRACE_IDS.clear()
        settings = Settings(state_dir=tmp_path / type(trigger).__name__, namespace="ns",
                            partitions=2, http_port=None)
        await run_pipeline(_pipeline(trigger), settings)
        assert TRACE_IDS and all(TRACE_IDS), (trigger, TRACE_IDS)
