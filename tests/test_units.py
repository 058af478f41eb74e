"""Pure pieces: trace-context fast path, settings, registry errors, pipeline checks, public API."""

from __future__ import annotations

from pathlib import Path

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from pydantic import BaseModel

import streamflow
from streamflow import Asset, ConfigError, ConnectorError, Pipeline, PipelineError, Settings
from streamflow._telemetry import Tracing, format_traceparent, is_sampled, parse_traceparent
from streamflow.connectors import build_source

SAMPLED = b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
UNSAMPLED = b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00"


def test_public_api_is_curated() -> None:
    assert sorted(streamflow.__all__) == sorted([
        "AllOf", "AnyOf", "Arrival", "Asset", "ConfigError", "ConnectorError", "Inputs",
        "OnEach", "Pipeline", "PipelineError", "RetryPolicy", "RunSummary", "Settings",
        "Window", "WindowRecords", "Worker", "__version__", "load_pipeline", "run_pipeline",
        "stable_id",
    ])


def test_traceparent_round_trip_and_sampled_bit() -> None:
    sc = parse_traceparent(SAMPLED)
    assert sc is not None and sc.trace_flags.sampled and sc.is_remote
    assert format_traceparent(sc) == SAMPLED
    assert is_sampled(SAMPLED) and not is_sampled(UNSAMPLED) and not is_sampled(None)
    assert is_sampled(SAMPLED[:-2] + b"03")  # W3C level 2 random flag alongside sampled
    for bad in (b"", b"garbage", SAMPLED[:-1], b"00-" + b"0" * 32 + b"-00f067aa0ba902b7-01"):
        assert parse_traceparent(bad) is None


def _tracing() -> tuple[Tracing, InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return Tracing(provider.get_tracer("t"), "kafka"), exporter


def test_unsampled_record_creates_no_span() -> None:
    tracing, exporter = _tracing()
    assert tracing.start_child("process t", UNSAMPLED) is None
    assert tracing.start_child("process t", b"not a traceparent") is None
    assert exporter.get_finished_spans() == ()


def test_sampled_record_continues_its_trace() -> None:
    tracing, exporter = _tracing()
    span = tracing.start_child("process t", SAMPLED)
    assert span is not None
    span.end()
    (done,) = exporter.get_finished_spans()
    assert done.context is not None and done.parent is not None
    assert done.context.trace_id == 0x4BF92F3577B34DA6A3CE929D0E0E4736
    assert done.parent.span_id == 0x00F067AA0BA902B7


def test_disabled_tracing_is_a_no_op() -> None:
    t = Tracing(None, "kafka")
    assert t.start_root("x", {}) is None and t.start_child("y", SAMPLED) is None


def test_settings_precedence(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = tmp_path / "sf.toml"
    cfg.write_text('[streamflow]\nnamespace = "fromfile"\npartitions = 3\n')
    monkeypatch.setenv("STREAMFLOW_CONFIG", str(cfg))
    monkeypatch.setenv("STREAMFLOW_PARTITIONS", "6")
    s = Settings.load()
    assert (s.namespace, s.partitions, s.transport) == ("fromfile", 6, "embedded")
    assert s.dead_letter_topic == "fromfile.dead-letters"
    s = Settings.load(kafka_bootstrap="127.0.0.1:9092", partitions=8)
    assert (s.transport, s.partitions) == ("kafka", 8)
    monkeypatch.setenv("STREAMFLOW_PARTITIONS", "many")
    with pytest.raises(ConfigError, match="partitions"):
        Settings.load()


def test_unknown_connector_names_the_known_ones() -> None:
    with pytest.raises(ConnectorError, match=r"unknown connector 'ftp'.*known connectors: .*files"):
        build_source("ftp", {})


def test_misconfigured_connector_says_which_setting() -> None:
    with pytest.raises(ConnectorError, match=r"source 'files' is misconfigured.*path"):
        build_source("files", {"format": "csv"})
    with pytest.raises(ConnectorError, match="colour"):
        build_source("files", {"path": "x", "colour": "red"})


class Item(BaseModel):
    id: int


def test_pipeline_checks_fail_at_declaration_or_start() -> None:
    with pytest.raises(ValueError, match="key='sku' is not a field of Item"):
        Asset("items", Item, key="sku")
    items, other = Asset("items", Item, key="id"), Asset("other", Item)
    p = Pipeline("p")
    p.source("files", asset=items, path="x")

    @p.stage(inputs=[other], output=items, name="s")
    def s(x: Item) -> Item:
        return x

    with pytest.raises(PipelineError, match="stage 's' reads asset 'other', which no source"):
        p.validate()
    with pytest.raises(PipelineError, match="used twice"):
        p.source("files", asset=items, path="y", name="s")


def test_connectors_list_shows_builtins_through_entry_points(
    capsys: pytest.CaptureFixture[str],
) -> None:
    import orjson

    from streamflow.cli import main

    assert main(["connectors", "list", "--json"]) == 0
    rows = orjson.loads(capsys.readouterr().out)
    files = {r["kind"]: r for r in rows if r["name"] == "files"}
    assert set(files) == {"source", "sink"}
    assert files["source"]["package"] == "streamflow"
    assert "path" in files["source"]["config_schema"]["properties"]


def test_importing_streamflow_imports_no_connector_dependency() -> None:
    import subprocess
    import sys

    code = (
        "import sys, streamflow, streamflow.connectors, streamflow.cli\n"
        "from streamflow.connectors import known_connectors\n"
        "known_connectors()\n"
        "heavy = {'asyncpg', 'aiohttp', 'croniter', 'pyarrow'} & set(sys.modules)\n"
        "print(sorted(heavy))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_time_range_is_half_open() -> None:
    from datetime import UTC, datetime

    from streamflow.connectors import TimeRange

    r = TimeRange(datetime(2026, 11, 1, tzinfo=UTC), datetime(2026, 11, 2, tzinfo=UTC))
    assert datetime(2026, 11, 1, tzinfo=UTC) in r
    assert datetime(2026, 11, 2, tzinfo=UTC) not in r
    with pytest.raises(ValueError, match="empty range"):
        TimeRange(r.end, r.start)


def test_json_logs_carry_the_current_trace_and_span() -> None:
    import logging

    import orjson

    from streamflow._logging import JsonFormatter

    provider = TracerProvider()
    tracer = provider.get_tracer("t")
    record = logging.makeLogRecord({"name": "streamflow.x", "levelname": "WARNING",
                                    "msg": "hello %s", "args": ("world",), "stage": "to_usd"})
    from opentelemetry import trace

    with trace.use_span(tracer.start_span("run to_usd"), end_on_exit=True) as span:
        line = orjson.loads(JsonFormatter().format(record))
        ctx = span.get_span_context()
    assert line["message"] == "hello world" and line["stage"] == "to_usd"
    assert line["trace_id"] == f"{ctx.trace_id:032x}"
    assert line["span_id"] == f"{ctx.span_id:016x}"
    outside = orjson.loads(JsonFormatter().format(record))
    assert "trace_id" not in outside
