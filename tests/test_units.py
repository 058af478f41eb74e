"""Pure pieces: trace-context fast path, settings, registry errors, pipeline checks, public API."""

from __future__ import annotations

import importlib
from pathlib import Path

import orjson
import pytest
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import ALWAYS_ON, ParentBased
from opentelemetry.trace import SpanKind
from pydantic import BaseModel

import streamflow
import streamflow.devservices
import streamflow.gates
from streamflow import Asset, ConfigError, ConnectorError, Pipeline, PipelineError, Settings
from streamflow.connectors import build_source
from streamflow.connectors.testing import MemorySource
from streamflow.errors import TelemetryError
from streamflow.observability import (
    RecSpan,
    Sampling,
    Tracing,
    encode,
    format_traceparent,
    is_sampled,
    parse_traceparent,
)

SAMPLED = b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
UNSAMPLED = b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00"


def test_public_api_is_curated() -> None:
    assert sorted(streamflow.__all__) == sorted([
        "AllOf", "AnyOf", "Arrival", "Asset", "ConfigError", "ConnectorError", "Inputs",
        "OnEach", "Pipeline", "PipelineError", "RetryPolicy", "RunSummary", "Settings",
        "Window", "WindowRecords", "Worker", "__version__", "load_pipeline", "run_pipeline",
        "stable_id", "ContractError", "StreamFlowError", "Sensitive",
    ])
    assert len(streamflow.__all__) <= 25
    # Quality gates' checks and alerts are exported from their own package.
    for name in ("Check", "CheckResult", "NotNull", "Range", "AllowedValues", "Pattern",
                 "Unique", "RowCount", "Freshness", "Expect", "ExpectBatch", "Alert",
                 "AlertSink", "LogAlerts", "WebhookAlerts"):
        assert name in streamflow.gates.__all__, name


def test_old_import_paths_warn_and_still_resolve() -> None:
    with pytest.warns(DeprecationWarning, match="moved to streamflow.gates.NotNull"):
        old = streamflow.NotNull  # type: ignore[attr-defined]
    assert old is streamflow.gates.NotNull
    with pytest.warns(DeprecationWarning, match="streamflow.devservices"):
        services = importlib.import_module("streamflow.services")
        assert services.KAFKA_BOOTSTRAP == streamflow.devservices.KAFKA_BOOTSTRAP
    with pytest.raises(AttributeError):
        streamflow.NoSuchName  # type: ignore[attr-defined]  # noqa: B018


def test_one_error_hierarchy() -> None:
    import streamflow.errors as errors

    classes = [v for v in vars(errors).values() if isinstance(v, type)
               and issubclass(v, Exception)]
    assert len(classes) >= 10
    for cls in classes:
        assert issubclass(cls, streamflow.StreamFlowError), cls
    # The builtin bases are kept, so existing except clauses still match.
    assert issubclass(errors.ConfigError, ValueError)
    assert issubclass(errors.TransportError, RuntimeError)


def test_traceparent_round_trip_and_sampled_bit() -> None:
    sc = parse_traceparent(SAMPLED)
    assert sc is not None and sc.trace_flags.sampled and sc.is_remote
    assert format_traceparent(sc) == SAMPLED
    assert is_sampled(SAMPLED) and not is_sampled(UNSAMPLED) and not is_sampled(None)
    assert is_sampled(SAMPLED[:-2] + b"03")  # W3C level 2 random flag alongside sampled
    for bad in (b"", b"garbage", SAMPLED[:-1], b"00-" + b"0" * 32 + b"-00f067aa0ba902b7-01"):
        assert parse_traceparent(bad) is None


def _tracing(ratio: float = 1.0) -> tuple[Tracing, list[RecSpan]]:
    done: list[RecSpan] = []
    return Tracing(done.append, "kafka", Sampling(ratio)), done


def test_unsampled_record_creates_no_span() -> None:
    tracing, done = _tracing()
    assert tracing.start_child("process t", UNSAMPLED) is None
    assert tracing.start_child("process t", b"not a traceparent") is None
    assert done == []


def test_sampled_record_continues_its_trace() -> None:
    tracing, done = _tracing()
    span = tracing.start_child("process t", SAMPLED)
    assert span is not None
    span.end()
    assert done == [span]
    assert span.trace_id == 0x4BF92F3577B34DA6A3CE929D0E0E4736
    assert span.parent_id == 0x00F067AA0BA902B7
    assert is_sampled(span.traceparent()) and span.traceparent()[3:35] == SAMPLED[3:35]


def test_disabled_tracing_is_a_no_op() -> None:
    t = Tracing(None, "kafka")
    assert t.start_root("x", {}) == (None, None) and t.start_child("y", SAMPLED) is None
    assert t.start_failure("z", UNSAMPLED) is None


def test_unsampled_root_gets_a_traceparent_but_no_span() -> None:
    tracing, done = _tracing(ratio=0.0)
    span, tp = tracing.start_root("read x", {})
    assert span is None and tp is not None and not is_sampled(tp)
    sc = parse_traceparent(tp)
    assert sc is not None and sc.trace_id and sc.span_id
    assert tracing.start_child("process t", tp) is None
    assert done == []


def test_a_failure_is_exported_under_the_unsampled_records_trace_id() -> None:
    tracing, done = _tracing(ratio=0.0)
    _, tp = tracing.start_root("read x", {})
    assert tp is not None
    sc = parse_traceparent(tp)
    assert sc is not None
    root = tracing.start_failure("read x", tp, root=True)  # the very root it would have had
    run = tracing.start_failure("run s", tp)  # or a child of whatever the header names
    assert root is not None and run is not None
    send = tracing.start_child("send dlq", run)
    assert send is not None
    for sp in (send, run, root):
        sp.end()
    assert {sp.trace_id for sp in done} == {sc.trace_id}
    assert (root.span_id, root.parent_id) == (sc.span_id, None)
    assert run.parent_id == sc.span_id and send.parent_id == run.span_id


def test_user_spans_follow_the_records_sampling_decision() -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider(sampler=ParentBased(ALWAYS_ON))
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    user = provider.get_tracer("user")
    tracing, _ = _tracing()
    run = tracing.start_child("run s", SAMPLED)
    assert run is not None
    with tracing.run_context(run):
        user.start_span("inside").end()
    with tracing.run_context(None):
        user.start_span("unsampled record").end()
    (inside,) = exporter.get_finished_spans()
    assert inside.parent is not None and inside.context is not None
    assert inside.parent.span_id == run.span_id and inside.context.trace_id == run.trace_id


def test_sampling_from_the_standard_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OTEL_TRACES_SAMPLER", raising=False)
    assert Sampling.from_env() == Sampling(1.0, True)
    monkeypatch.setenv("OTEL_TRACES_SAMPLER", "parentbased_traceidratio")
    monkeypatch.setenv("OTEL_TRACES_SAMPLER_ARG", "0.01")
    assert Sampling.from_env() == Sampling(0.01, True)
    monkeypatch.setenv("OTEL_TRACES_SAMPLER", "traceidratio")
    assert Sampling.from_env() == Sampling(0.01, False)
    monkeypatch.setenv("OTEL_TRACES_SAMPLER", "always_off")
    assert Sampling.from_env() == Sampling(0.0, False)
    monkeypatch.setenv("OTEL_TRACES_SAMPLER", "traceidratio")
    monkeypatch.setenv("OTEL_TRACES_SAMPLER_ARG", "2")
    with pytest.raises(TelemetryError, match="OTEL_TRACES_SAMPLER_ARG='2'"):
        Sampling.from_env()
    monkeypatch.setenv("OTEL_TRACES_SAMPLER", "sometimes")
    with pytest.raises(TelemetryError, match="'sometimes' is not supported"):
        Sampling.from_env()


def test_ratio_sampling_samples_about_that_share() -> None:
    tracing, _ = _tracing(ratio=0.1)
    sampled = sum(is_sampled(tracing.start_root("r", {})[1]) for _ in range(5000))
    assert 350 < sampled < 650  # 500 expected; far outside this is a broken decision


def test_otlp_json_encoding_follows_the_otlp_json_mapping() -> None:
    tracing, done = _tracing()
    root, _ = tracing.start_root("read x", {"a": "s", "n": 3, "f": 0.5, "b": True})
    assert root is not None
    child = tracing.start_child("send t", root, SpanKind.PRODUCER, links=[SAMPLED])
    assert child is not None
    child.fail("bad", ValueError("boom"))
    child.end()
    root.end()
    body = orjson.loads(encode(done, Resource.create({"service.name": "svc"})))
    (rs,) = body["resourceSpans"]
    assert {"key": "service.name", "value": {"stringValue": "svc"}} in rs["resource"]["attributes"]
    (ss,) = rs["scopeSpans"]
    spans = {s["name"]: s for s in ss["spans"]}
    r, c = spans["read x"], spans["send t"]
    assert len(r["traceId"]) == 32 and len(r["spanId"]) == 16 and "parentSpanId" not in r
    assert c["parentSpanId"] == r["spanId"] and c["kind"] == 4 and r["kind"] == 1
    assert {a["key"]: a["value"] for a in r["attributes"]} == {
        "a": {"stringValue": "s"}, "n": {"intValue": "3"}, "f": {"doubleValue": 0.5},
        "b": {"boolValue": True}}
    assert c["status"] == {"code": 2, "message": "bad"}
    (event,) = c["events"]
    assert event["name"] == "exception"
    assert {"key": "exception.type", "value": {"stringValue": "ValueError"}} in event["attributes"]
    assert c["links"][0]["traceId"] == SAMPLED[3:35].decode()
    assert int(r["endTimeUnixNano"]) >= int(r["startTimeUnixNano"]) > 0


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
    p.source(MemorySource([]), asset=items)

    @p.stage(inputs=[other], output=items, name="s")
    def s(x: Item) -> Item:
        return x

    with pytest.raises(PipelineError, match="stage 's' reads asset 'other', which no source"):
        p.validate()
    with pytest.raises(PipelineError, match="used twice"):
        p.source(MemorySource([]), asset=items, name="s")


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

    from streamflow.observability import JsonFormatter

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


def test_log_lines_in_a_run_carry_the_records_trace_id_sampled_or_not() -> None:
    import logging

    from streamflow.observability import JsonFormatter

    record = logging.makeLogRecord({"name": "streamflow.x", "msg": "in the stage"})
    tracing, _ = _tracing()
    run = tracing.start_child("run s", SAMPLED)
    assert run is not None
    with tracing.run_context(run, SAMPLED):
        line = orjson.loads(JsonFormatter().format(record))
    assert (line["trace_id"], line["span_id"]) == (f"{run.trace_id:032x}", f"{run.span_id:016x}")
    with tracing.run_context(None, UNSAMPLED):  # an unsampled record: its own trace id
        line = orjson.loads(JsonFormatter().format(record))
    assert line["trace_id"] == UNSAMPLED[3:35].decode()


def test_a_ledger_message_is_a_valid_run_record() -> None:
    from streamflow.model import RunInput, RunRecord
    from streamflow.state import record_message

    inputs = [RunInput(asset="a", partition="d1", version=2, arrival_id="x")]
    m = record_message("ns.runs", run_id="r1", stage="s", partition="d1", status="retrying",
                       attempt=1, max_attempts=3, started_ms=10, ended_ms=20, mode="live",
                       replay=0, inputs=inputs, outputs=["o1"], error={"type": "ValueError"},
                       trace_id="ab" * 16)
    rec = RunRecord.model_validate_json(m.value)
    assert m.key == b"r1" and m.topic == "ns.runs"
    assert rec == RunRecord(run_id="r1", stage="s", partition="d1", status="retrying", attempt=1,
                            max_attempts=3, started_ms=10, ended_ms=20, mode="live", replay=0,
                            inputs=inputs, outputs=["o1"], error={"type": "ValueError"},
                            trace_id="ab" * 16)
    assert set(orjson.loads(m.value)) == {"v", *RunRecord.model_fields}
