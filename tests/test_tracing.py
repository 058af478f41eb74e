"""One trace per record, source → stage → sink, fetched back from the real Jaeger."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from streamflow import Settings

from .helpers import read_topic
from .jaeger_client import chain, fetch_trace
from .test_retail import run_cli, seed_landing


@pytest.mark.parametrize("settings", ["kafka"], indirect=True)
async def test_record_path_is_one_trace_in_jaeger(
    settings: Settings, tmp_path: Path, repo_root: Path, jaeger: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    ns = settings.namespace
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", jaeger["otlp_http"])
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf")
    monkeypatch.setenv("OTEL_SERVICE_NAME", f"sf-test-{ns}")
    monkeypatch.setenv("OTEL_TRACES_SAMPLER", "parentbased_always_on")
    workdir = tmp_path / "retail"
    seed_landing(repo_root, workdir)
    assert run_cli(settings, workdir, repo_root)["records_out"] == 9

    out = await read_topic(settings, f"{ns}.usd_sales")
    msg = next(m for m in out if m.key == b"S1-0001")
    traceparent = dict(msg.headers)["traceparent"].decode()
    version, trace_id, _parent, flags = traceparent.split("-")
    assert version == "00" and int(flags, 16) & 1

    spans = fetch_trace(jaeger["query"], trace_id, min_spans=7)
    names = sorted(s.name for s in spans)
    assert names == sorted([
        "read files-pos_sales", f"send {ns}.pos_sales", f"process {ns}.pos_sales",
        "run to_usd", f"send {ns}.usd_sales", f"process {ns}.usd_sales",
        "write files-usd_sales",
    ])
    leaf = next(s for s in spans if s.name == "write files-usd_sales")
    path = chain(spans, leaf)
    assert [(s.name, s.kind) for s in path] == [
        ("read files-pos_sales", "INTERNAL"),
        (f"send {ns}.pos_sales", "PRODUCER"),
        (f"process {ns}.pos_sales", "CONSUMER"),
        ("run to_usd", "INTERNAL"),
        (f"send {ns}.usd_sales", "PRODUCER"),
        (f"process {ns}.usd_sales", "CONSUMER"),
        ("write files-usd_sales", "INTERNAL"),
    ]
    read, send1, proc1, run, send2, proc2, write = path
    assert read.attributes["streamflow.origin.file"] == "pos-2026-11-01.csv"
    assert read.attributes["streamflow.origin.line"] == "2"
    for send, topic in ((send1, f"{ns}.pos_sales"), (send2, f"{ns}.usd_sales")):
        assert send.attributes["messaging.system"] == "kafka"
        assert send.attributes["messaging.operation.name"] == "send"
        assert send.attributes["messaging.destination.name"] == topic
        assert send.attributes["messaging.kafka.message.key"] == "S1-0001"
    assert proc1.attributes["messaging.consumer.group.name"] == f"{ns}.stage.to_usd"
    assert proc2.attributes["messaging.consumer.group.name"] == f"{ns}.sink.files-usd_sales"
    # The sink's process span points at exactly the Kafka record we read back.
    assert proc2.attributes["messaging.destination.name"] == f"{ns}.usd_sales"
    assert proc2.attributes["messaging.destination.partition.id"] == str(msg.partition)
    assert proc2.attributes["messaging.kafka.offset"] == msg.offset
    assert proc2.attributes["messaging.operation.name"] == "process"
    assert run.attributes["streamflow.stage"] == "to_usd"
    assert len(str(run.attributes["streamflow.run_id"])) == 32
    assert write.attributes["streamflow.sink.location"] == str(workdir / "out")
    # The record's traceparent names the send span that produced it.
    assert traceparent.split("-")[2] == send2.span_id

    # A dead-lettered record keeps its trace too: the failing run and the dead-letter send.
    dead = await read_topic(settings, settings.dead_letter_topic)
    chf = next(m for m in dead if b"CHF" in m.value)
    dead_trace = dict(chf.headers)["traceparent"].decode().split("-")[1]
    dspans = fetch_trace(jaeger["query"], dead_trace, min_spans=5)
    dsend = next(s for s in dspans if s.name == f"send {settings.dead_letter_topic}")
    drun = next(s for s in dspans if s.name == "run to_usd")
    assert dsend.parent_id == drun.span_id and dsend.kind == "PRODUCER"
    assert drun.status_code == 2  # ERROR
    assert os.environ["OTEL_SERVICE_NAME"] == f"sf-test-{ns}"
