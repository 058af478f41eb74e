"""One trace per record, source → stage → sink, fetched back from the real Jaeger."""

from __future__ import annotations

import asyncio
import os
import re
from pathlib import Path

import orjson
import pytest

from streamflow import Pipeline, RetryPolicy, Settings, run_pipeline
from streamflow.cli import main
from streamflow.connectors.testing import MemorySink
from streamflow.model import Message
from streamflow.observability import is_sampled
from streamflow.ops import list_runs

from .helpers import Order, checked, memory_source, order_pipeline, orders, read_topic
from .jaeger_client import chain, fetch_trace, search_service
from .test_retail import run_cli, seed_landing


@pytest.mark.parametrize("settings", ["kafka"], indirect=True)
async def test_record_path_is_one_trace_in_jaeger(
    settings: Settings, tmp_path: Path, repo_root: Path, jaeger: dict[str, str],
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:
    ns = settings.namespace
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", jaeger["otlp_http"])
    monkeypatch.setenv("OTEL_SERVICE_NAME", f"sf-test-{ns}")
    monkeypatch.setenv("OTEL_TRACES_SAMPLER", "parentbased_always_on")
    workdir = tmp_path / "retail"
    seed_landing(repo_root, workdir)
    assert run_cli(settings, workdir, repo_root)["records_out"] == 20

    out = await read_topic(settings, f"{ns}.pos_usd")
    msg = next(m for m in out if m.key == b"S1-0001")
    traceparent = dict(msg.headers)["traceparent"].decode()
    version, trace_id, _parent, flags = traceparent.split("-")
    assert version == "00" and int(flags, 16) & 1

    spans = fetch_trace(jaeger["query"], trace_id, min_spans=8)
    names = sorted(s.name for s in spans)
    assert names == sorted([  # pos_usd is processed twice: by the sink and by pos_daily
        "read files-pos_sales", f"send {ns}.pos_sales", f"process {ns}.pos_sales",
        "run to_usd", f"send {ns}.pos_usd", f"process {ns}.pos_usd",
        f"process {ns}.pos_usd", "write files-pos_usd",
    ])
    leaf = next(s for s in spans if s.name == "write files-pos_usd")
    path = chain(spans, leaf)
    assert [(s.name, s.kind) for s in path] == [
        ("read files-pos_sales", "INTERNAL"),
        (f"send {ns}.pos_sales", "PRODUCER"),
        (f"process {ns}.pos_sales", "CONSUMER"),
        ("run to_usd", "INTERNAL"),
        (f"send {ns}.pos_usd", "PRODUCER"),
        (f"process {ns}.pos_usd", "CONSUMER"),
        ("write files-pos_usd", "INTERNAL"),
    ]
    read, send1, proc1, run, send2, proc2, write = path
    assert read.attributes["streamflow.origin.file"] == "pos-2026-11-01.csv"
    assert read.attributes["streamflow.origin.line"] == "2"
    for send, topic in ((send1, f"{ns}.pos_sales"), (send2, f"{ns}.pos_usd")):
        assert send.attributes["messaging.system"] == "kafka"
        assert send.attributes["messaging.operation.name"] == "send"
        assert send.attributes["messaging.destination.name"] == topic
        assert send.attributes["messaging.kafka.message.key"] == "S1-0001"
    assert proc1.attributes["messaging.consumer.group.name"] == f"{ns}.stage.to_usd"
    assert proc2.attributes["messaging.consumer.group.name"] == f"{ns}.sink.files-pos_usd"
    # The sink's process span points at exactly the Kafka record we read back.
    assert proc2.attributes["messaging.destination.name"] == f"{ns}.pos_usd"
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

    # `streamflow trace` follows S1-0001 from the landing folder through the POS day's
    # fan-in: its runs, each trace's span tree with links, and the Jaeger URLs.
    report_run = next(r for r in await list_runs(settings) if r.stage == "pos_daily"
                      and r.partition == "2026-11-01")
    assert report_run.trace_id is not None
    fetch_trace(jaeger["query"], report_run.trace_id, min_spans=3)
    args = ["trace", "pos_sales", "S1-0001", "--kafka", str(settings.kafka_bootstrap),
            "--namespace", ns, "--jaeger", jaeger["query"]]
    capsys.readouterr()
    assert await asyncio.to_thread(main, args) == 0
    out = capsys.readouterr().out
    assert re.search(r"run \w+ stage to_usd \[succeeded, attempt 1\] <- pos_sales:", out), out
    assert re.search(r"run \w+ stage pos_daily \[succeeded, attempt 1\] <- "
                     r"pos_usd:2026-11-01 \(x6\)", out), out
    assert f"trace {trace_id} (the record's own trace)  {jaeger['query']}/trace/{trace_id}" in out
    assert f"{jaeger['query']}/trace/{report_run.trace_id}" in out
    assert "write files-pos_usd [internal]" in out and "run pos_daily [internal]" in out
    assert f"↳ link to span {traceparent.split('-')[2]} of trace {trace_id}" in out
    assert await asyncio.to_thread(main, [*args, "--json"]) == 0
    as_json = orjson.loads(capsys.readouterr().out)
    # Downstream of the POS day: the daily report and the inventory reconciliation.
    assert {r["stage"] for r in as_json["runs"]} == {
        "to_usd", "pos_daily", "daily_report", "reconcile_inventory"}
    assert trace_id in as_json["traces"] and report_run.trace_id in as_json["traces"]


def fan_in(n_orders: int, payment_days: list[str]) -> Pipeline:
    return order_pipeline(
        "fanin",
        memory_source([[{"id": i, "day": f"d{i}"} for i in range(n_orders)]
                       + [{"id": "NaN", "day": "d0"}]]),
        memory_source([[{"id": 100 + i, "day": d} for i, d in enumerate(payment_days)]]),
        MemorySink(), user_span=True)


def _otel(monkeypatch: pytest.MonkeyPatch, jaeger: dict[str, str], service: str,
          sampler: str, arg: str = "") -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", jaeger["otlp_http"])
    monkeypatch.setenv("OTEL_SERVICE_NAME", service)
    monkeypatch.setenv("OTEL_TRACES_SAMPLER", sampler)
    monkeypatch.setenv("OTEL_TRACES_SAMPLER_ARG", arg)


def _trace_id(m: Message) -> str:
    return dict(m.headers)["traceparent"].decode().split("-")[1]


async def test_fan_in_run_is_a_child_of_the_completing_input_and_links_the_other(
    settings: Settings, jaeger: dict[str, str], monkeypatch: pytest.MonkeyPatch,
) -> None:
    """On both transports: trace context travels in the embedded log's headers too."""
    ns = settings.namespace
    _otel(monkeypatch, jaeger, f"sf-fanin-{ns}", "parentbased_always_on")

    summary = await run_pipeline(fan_in(2, ["d0", "d1"]), settings)
    assert summary.records_out == 2

    out = {orjson.loads(m.value)["day"]: m for m in await read_topic(settings, f"{ns}.reports")}
    msgs = {orjson.loads(m.value)["id"]: m for m in await read_topic(settings, f"{ns}.checked")}
    pays = {orjson.loads(m.value)["id"]: m for m in await read_topic(settings, f"{ns}.payments")}
    report_msg = out["d0"]
    spans = fetch_trace(jaeger["query"], _trace_id(report_msg), min_spans=6)
    run = next(s for s in spans if s.name == "run report")
    # The run sits in the trace of the input whose arrival completed the barrier...
    completing = {_trace_id(msgs[0]): "checked", _trace_id(pays[100]): "payments"}
    assert _trace_id(report_msg) in completing
    other = next(m for t, m in ((t, msgs[0] if a == "checked" else pays[100])
                                for t, a in completing.items()) if t != _trace_id(report_msg))
    # ...and links to the other input's send span, in that input's own trace.
    other_tp = dict(other.headers)["traceparent"].decode().split("-")
    assert run.links == [(other_tp[1], other_tp[2])]
    write = next(s for s in spans if s.name == "write memorysink-reports")
    path = [(s.name, s.kind) for s in chain(spans, write)]
    assert path[-5:] == [
        (f"process {ns}.{completing[_trace_id(report_msg)]}", "CONSUMER"),
        ("run report", "INTERNAL"), (f"send {ns}.reports", "PRODUCER"),
        (f"process {ns}.reports", "CONSUMER"), ("write memorysink-reports", "INTERNAL")]
    assert run.attributes["streamflow.stage"] == "report"
    assert run.attributes["streamflow.partition"] == "d0"
    # A span that the stage function opened through the plain OpenTelemetry API is a child of
    # its run.
    ospans = fetch_trace(jaeger["query"], _trace_id(msgs[0]), min_spans=4)
    lookup = next(s for s in ospans if s.name == "lookup customer")
    assert next(s for s in ospans if s.span_id == lookup.parent_id).name == "run check"

    # By service: both inputs' traces are there.
    found = search_service(jaeger["query"], f"sf-fanin-{ns}")
    assert {_trace_id(report_msg), _trace_id(other)} <= set(found)
    dead = {orjson.loads(m.value)["stage"]: m
            for m in await read_topic(settings, settings.dead_letter_topic)}
    assert set(dead) == {"orders-src"}  # only 0 and 1 were run; order 4 does not exist here


@pytest.mark.parametrize("settings", ["kafka"], indirect=True)
async def test_at_one_percent_sampling_failures_are_still_exported(
    settings: Settings, jaeger: dict[str, str], monkeypatch: pytest.MonkeyPatch,
) -> None:
    ns = settings.namespace
    service = f"sf-sampled-{ns}"
    _otel(monkeypatch, jaeger, service, "parentbased_traceidratio", "0.01")

    summary = await run_pipeline(fan_in(60, ["d1", "d2"]), settings)
    assert summary.dead_lettered == 2  # the malformed order at the source, order 4 in check

    dead = {orjson.loads(m.value)["stage"]: m
            for m in await read_topic(settings, settings.dead_letter_topic)}
    # The run that failed, and the send to the dead-letter topic, under the record's trace id.
    check_tid = _trace_id(dead["check"])
    spans = fetch_trace(jaeger["query"], check_tid, min_spans=2)
    run = next(s for s in spans if s.name == "run check")
    send = next(s for s in spans if s.name == f"send {settings.dead_letter_topic}")
    assert run.status_code == 2 and send.parent_id == run.span_id and send.kind == "PRODUCER"
    assert run.attributes["streamflow.run_id"]
    # The order's own arrival carried that trace id, unsampled: its failure alone was exported.
    order4 = next(m for m in await read_topic(settings, f"{ns}.orders")
                  if orjson.loads(m.value)["id"] == 4)
    tp = dict(order4.headers)["traceparent"].decode()
    assert tp.split("-")[1] == check_tid
    # The malformed source record: its read span (the root it would have had) and the send.
    src_tid = _trace_id(dead["orders-src"])
    sspans = fetch_trace(jaeger["query"], src_tid, min_spans=2)
    read = next(s for s in sspans if s.name == "read orders-src")
    assert read.status_code == 2 and read.parent_id is None
    assert next(s for s in sspans if s.name.startswith("send ")).parent_id == read.span_id

    # Unsampled records create no spans: every trace of the service is a failure's or a
    # record whose traceparent says sampled.
    arrivals = [*await read_topic(settings, f"{ns}.orders"),
                *await read_topic(settings, f"{ns}.payments")]
    sampled = {_trace_id(m) for m in arrivals if is_sampled(dict(m.headers)["traceparent"])}
    assert len(sampled) < 10  # about 1% of 62 records
    found = search_service(jaeger["query"], service)
    assert {check_tid, src_tid} <= set(found)
    failures = {check_tid, src_tid}
    extra = {t: sorted(s.name for s in found[t]) for t in set(found) - sampled - failures}
    heads = sorted(dict(m.headers)["traceparent"].decode() for m in arrivals)
    assert not extra, f"unsampled records made spans: {extra}; arrivals: {heads}"
    assert all(s.name != "lookup customer" for t in found if t not in sampled
               for s in found[t])  # user spans follow the record's decision


@pytest.mark.parametrize("settings", ["kafka"], indirect=True)
async def test_sql_sink_writes_carry_db_attributes_and_runs_their_attempts(
    settings: Settings, tmp_path: Path, jaeger: dict[str, str], monkeypatch: pytest.MonkeyPatch,
) -> None:
    from streamflow import devservices as services

    services.up(["postgres"])
    ns = settings.namespace
    _otel(monkeypatch, jaeger, f"sf-sql-{ns}", "always_on")
    tries: dict[int, int] = {}

    def flaky(o: Order) -> Order:
        tries[o.id] = tries.get(o.id, 0) + 1
        if tries[o.id] == 1:
            raise ConnectionError("first attempt always fails")
        return o

    table = f"t_{ns}"
    p = Pipeline("sql")
    p.source(memory_source([[{"id": 7, "day": "d7"}]]), asset=orders)
    p.stage(inputs=[orders], output=checked, name="flaky",
            retry=RetryPolicy(attempts=2, backoff_s=0.01))(flaky)
    p.sink("postgres", asset=checked, dsn=services.POSTGRES_DSN, table=table)
    p.sink("sqlite", asset=checked, path=tmp_path / "out.db", table="checked")
    summary = await run_pipeline(p, settings)
    assert (summary.records_out, summary.retried) == (2, 1)

    (out,) = await read_topic(settings, f"{ns}.checked")
    spans = fetch_trace(jaeger["query"], _trace_id(out), min_spans=9)
    writes = {s.name: s for s in spans if s.name.startswith("write ")}
    pg = writes["write postgres-checked"].attributes
    assert (pg["db.system.name"], pg["db.collection.name"], pg["db.namespace"]) == (
        "postgresql", table, "streamflow")
    assert pg["db.operation.name"] == "upsert" and pg["server.port"] == 5432
    lite = writes["write sqlite-checked"].attributes
    assert (lite["db.system.name"], lite["db.collection.name"]) == ("sqlite", "checked")
    # Both attempts are in the record's trace, each with its outcome as an event.
    runs = sorted((s for s in spans if s.name == "run flaky"),
                  key=lambda s: s.attributes["streamflow.attempt"])
    assert [(r.attributes["streamflow.attempt"], r.status_code) for r in runs] == [(1, 2), (2, 0)]
    assert [sorted(r.events) for r in runs] == [["attempt", "exception"], ["attempt"]]
    import asyncpg

    conn = await asyncpg.connect(services.POSTGRES_DSN)
    try:
        await conn.execute(f"DROP TABLE IF EXISTS {table}")
    finally:
        await conn.close()
