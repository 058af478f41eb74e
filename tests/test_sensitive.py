"""Sensitive fields (issue 18): values planted in a contract's sensitive field are searched for
in every channel StreamFlow writes about records: text and JSON logs, spans as Jaeger stores
them, ``/status``, ``/metrics``, alert bodies, OpenLineage events, dead-letter reasons and
errors, the ledger's and the holds' check results, and the CLI. Only the records themselves
(topics, dead-letter payloads) keep them; ``dlq show`` masks them unless ``--reveal``."""

from __future__ import annotations

import asyncio
import io
import logging
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import httpx
import orjson
import pytest
from pydantic import BaseModel, Field, StringConstraints, ValidationError

from streamflow import Asset, Pipeline, PipelineError, Sensitive, Settings, Worker, run_pipeline
from streamflow.cli import main
from streamflow.connectors import SinkRecord, redact
from streamflow.connectors.testing import MemorySink
from streamflow.gates import Pattern, WebhookAlerts
from streamflow.model import (
    Redaction,
    describe_validation,
    done_runs_topic,
    hold_topic,
    mask_payload,
    runs_topic,
    sensitive_fields,
)
from streamflow.observability import JsonFormatter, TextFormatter

from .helpers import memory_source, read_topic
from .test_alerts import receiver
from .test_observability import ThenIdle

MARK = "zqPLANT"
"""In every planted value: no channel but the records themselves may contain it."""

log = logging.getLogger("shop.score")


class Customer(BaseModel):
    id: str
    day: str
    email: Annotated[str, Sensitive(), StringConstraints(pattern="@")]
    score: int


class Scored(BaseModel):
    id: str
    day: str
    email: Annotated[str, Sensitive()]
    score: int


class RefusingSink(MemorySink):
    """Refuses a batch holding c6, naming its value, as a careless connector might."""

    async def write(self, records: Sequence[SinkRecord]) -> None:
        for r in records:
            if r.value["id"] == "c6":
                raise ValueError(f"the warehouse refused {r.value['email']}")
        await super().write(records)


RECORDS: list[dict[str, object]] = [
    {"id": "c1", "day": "d1", "email": f"{MARK}1@example.com", "score": 1},  # flows
    {"id": "c2", "day": "d1", "email": f"{MARK}2@example.com", "score": "x"},  # source: score
    {"id": "c3", "day": "d1", "email": f"{MARK}3-without-at", "score": 3},  # source: email
    {"id": "c4", "day": "d1", "email": f"{MARK}4@example.com", "score": 13},  # stage raises
    {"id": "c5", "day": "d2", "email": f"{MARK}5@evil.test", "score": 5},  # gate holds d2
    {"id": "c6", "day": "d3", "email": f"{MARK}6@example.com", "score": 6},  # sink refuses
]


def _pipeline(alert_url: str) -> Pipeline:
    customers = Asset("customers", Customer, key="id", partition_by="day")
    scored = Asset("scored", Scored, key="id", partition_by="day")
    p = Pipeline("privacy", alerts=[WebhookAlerts(alert_url)])
    p.source(ThenIdle([RECORDS]), asset=customers, name="crm")

    @p.stage(inputs=[customers], output=scored, checks=[Pattern("email", r".+@example\.com")])
    def score(c: Customer) -> Scored:
        log.warning("scoring %s for %s", c.id, c.email)  # the user's own log line
        if c.score == 13:
            raise ValueError(f"cannot score {c.email}")
        return Scored(**c.model_dump())

    p.sink(RefusingSink(), asset=scored, name="warehouse")
    return p


@contextmanager
def _logs() -> Iterator[tuple[io.StringIO, io.StringIO]]:
    """StreamFlow's two log formats, on the root logger, as ``configure_logging`` sets them."""
    json_out, text_out = io.StringIO(), io.StringIO()
    handlers = [logging.StreamHandler(json_out), logging.StreamHandler(text_out)]
    handlers[0].setFormatter(JsonFormatter())
    handlers[1].setFormatter(TextFormatter())
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.INFO)
    for h in handlers:
        root.addHandler(h)
    try:
        yield json_out, text_out
    finally:
        for h in handlers:
            root.removeHandler(h)
        root.setLevel(level)


def _jaeger_raw(query: str, service: str) -> str:
    params = urllib.parse.urlencode({
        "query.service_name": service,
        "query.start_time_min": time.strftime("%Y-%m-%dT%H:%M:%SZ",
                                              time.gmtime(time.time() - 3600)),
        "query.start_time_max": time.strftime("%Y-%m-%dT%H:%M:%SZ",
                                              time.gmtime(time.time() + 60)),
        "query.num_traces": 1000})
    try:
        with urllib.request.urlopen(f"{query}/api/v3/traces?{params}", timeout=30) as resp:
            return str(resp.read().decode())
    except urllib.error.HTTPError as e:
        if e.code == 404:
            return ""
        raise


async def _settled(http: httpx.AsyncClient) -> dict[str, Any]:
    deadline = time.monotonic() + 30
    while True:
        status = (await http.get("/status")).json()
        runs = status["stages"].get("score", {}).get("runs", {})
        sink = status["stages"].get("warehouse", {})
        if runs == {"succeeded": 2, "dead-lettered": 1, "held": 1} and sink.get("dead_lettered"):
            return dict(status)
        assert time.monotonic() < deadline, orjson.dumps(status).decode()
        await asyncio.sleep(0.2)


async def _cli(args: list[str], settings: Settings, capsys: pytest.CaptureFixture[str]
               ) -> str:
    where = ["--state-dir", str(settings.state_dir), "--namespace", settings.namespace]
    if settings.kafka_bootstrap:
        where += ["--kafka", settings.kafka_bootstrap]
    assert await asyncio.to_thread(main, [*args, *where]) == 0
    return capsys.readouterr().out


async def test_a_planted_sensitive_value_reaches_no_channel_but_the_records(
    settings: Settings, tmp_path: Path, jaeger: dict[str, str],
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:
    service = f"sf-sensitive-{settings.namespace}"
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", jaeger["otlp_http"])
    monkeypatch.setenv("OTEL_SERVICE_NAME", service)
    monkeypatch.setenv("OTEL_TRACES_SAMPLER", "always_on")
    lineage = tmp_path / "lineage.jsonl"
    settings = settings.model_copy(update={"lineage": f"file:{lineage}"})
    async with receiver() as rx:
        with _logs() as (json_log, text_log):
            worker = Worker(_pipeline(rx.url), settings)
            task = asyncio.create_task(worker.run())
            while worker.http_port is None:
                assert not task.done(), task
                await asyncio.sleep(0.01)
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{worker.http_port}",
                                         timeout=10) as http:
                status = await _settled(http)
                metrics = (await http.get("/metrics")).text
            worker.request_stop()
            await asyncio.wait_for(task, 120)
        alerts = orjson.dumps([body for _, body, _ in rx.requests]).decode()
    ns = settings.namespace

    # Every failure happened, and says why, without the value.
    reasons = [f["reason"] for f in status["recent_failures"]]
    assert any("field 'score'" in r for r in reasons), reasons
    assert any("field 'email'" in r and "*** (sensitive)" in r for r in reasons), reasons
    assert any("cannot score ***" in r for r in reasons), reasons
    assert any("gate held partition 'd2'" in r for r in reasons), reasons
    assert any("the warehouse refused ***" in r for r in reasons), reasons
    assert "gate-held" in alerts
    channels = {"/status": orjson.dumps(status).decode(), "/metrics": metrics,
                "alerts": alerts, "lineage": lineage.read_text(),
                "json logs": json_log.getvalue(), "text logs": text_log.getvalue()}
    assert "scoring c1 for ***" in channels["text logs"]
    assert "cannot score ***" in channels["lineage"]

    dead = [orjson.loads(m.value) for m in await read_topic(settings, settings.dead_letter_topic)]
    assert len(dead) >= 5
    assert all(MARK in d.pop("payload") for d in dead)  # the records themselves stay
    channels["dead letters (all but payloads)"] = orjson.dumps(dead).decode()
    ledger = [m.value.decode() for t in (runs_topic(ns), done_runs_topic(ns))
              for m in await read_topic(settings, t)]
    assert any("@example" in entry for entry in ledger)  # the check results are there
    channels["ledger"] = "\n".join(ledger)
    holds = [orjson.loads(m.value) for m in await read_topic(settings, hold_topic(ns, "score"))
             if m.value]
    assert holds and all(h["checks"] for h in holds)
    channels["holds' check results"] = orjson.dumps([h["checks"] for h in holds]).decode()

    listed = orjson.loads(await _cli(["dlq", "list", "--json"], settings, capsys))
    one = next(d["id"] for d in listed if "cannot score" in d["reason"])
    shown = await _cli(["dlq", "show", one], settings, capsys)
    assert '\\"email\\":\\"***\\"' in shown
    assert f"{MARK}4@example.com" in await _cli(["dlq", "show", one, "--reveal"], settings, capsys)
    runs = orjson.loads(await _cli(["runs", "list", "--json"], settings, capsys))
    held = next(r["run_id"] for r in runs if r["status"] == "held")
    channels["CLI"] = "\n".join([
        orjson.dumps(listed).decode(), shown, await _cli(["dlq", "list"], settings, capsys),
        await _cli(["runs", "list"], settings, capsys),
        await _cli(["runs", "show", held], settings, capsys)])

    raw = ""
    deadline = time.monotonic() + 60
    wanted = ("cannot score ***", "gate held", "field 'score'", "the warehouse refused ***",
              "*** (sensitive)")
    while not all(s in raw for s in wanted):
        assert time.monotonic() < deadline, [s for s in wanted if s not in raw]
        await asyncio.sleep(0.5)
        raw = await asyncio.to_thread(_jaeger_raw, jaeger["query"], service)
    channels["Jaeger"] = raw
    leaks = [name for name, text in channels.items() if MARK in text]
    assert not leaks, {name: channels[name][:2000] for name in leaks}


async def test_the_lean_path_of_a_plain_stage_withholds_too(settings: Settings) -> None:
    """A stage without gates, lineage or timeout runs records in batches (``_each``)."""
    customers = Asset("customers", Customer, key="id")
    p = Pipeline("lean")
    p.source(memory_source([RECORDS[:1] + RECORDS[3:4]]), asset=customers, name="crm")

    @p.stage(inputs=[customers])
    def score(c: Customer) -> None:
        if c.score == 13:
            raise ValueError(f"cannot score {c.email}")

    summary = await run_pipeline(p, settings)
    assert summary.dead_lettered == 1
    (dead,) = [orjson.loads(m.value)
               for m in await read_topic(settings, settings.dead_letter_topic)]
    assert MARK in dead.pop("payload") and dead["sensitive"] == ["email"]
    assert "cannot score ***" in dead["reason"] and MARK not in orjson.dumps(dead).decode()


class Card(BaseModel):
    number: Annotated[str, Sensitive()]
    brand: str


class Holder(BaseModel):
    id: str
    name: Annotated[str, Sensitive, Field(alias="fullName")]
    cards: list[Card] = []
    backup: Card | None = None
    pin: Annotated[int, Sensitive()] = 0


def test_sensitive_fields_are_found_in_nested_models_lists_and_aliases() -> None:
    assert set(sensitive_fields(Holder)) == {
        ("name",), ("fullName",), ("cards", "number"), ("backup", "number"), ("pin",)}
    assert sensitive_fields(Card) == (("number",),)


def test_withheld_values_whole_words_when_short_anywhere_when_long() -> None:
    h = Holder.model_validate({"id": "h1", "fullName": "Ada Lovelace", "pin": 42,
                               "cards": [{"number": "4111-1111", "brand": "visa"}]})
    r = Redaction()
    r.add(Holder, h)
    text = "Ada Lovelace paid with 4111-1111 (x4111-1111y) at line 42, not 1425; 'Ada Lovelace'"
    assert r.text(text) == "*** paid with *** (x***y) at line ***, not 1425; '***'"
    from_json = Redaction()
    from_json.add(Holder, b'{"id": "h2", "fullName": "Grace \\"G\\" Hopper"}')
    assert from_json.text('name="Grace \\"G\\" Hopper" or Grace "G" Hopper') == \
        'name="***" or ***'


def test_dlq_show_masks_a_record_a_planned_run_and_withholds_what_is_not_json() -> None:
    record = '{"id":"h1","fullName":"Ada","cards":[{"number":"4111","brand":"visa"}]}'
    names = ["cards.number", "fullName", "name"]
    assert orjson.loads(mask_payload(record, names)) == {
        "id": "h1", "fullName": "***", "cards": [{"number": "***", "brand": "visa"}]}
    planned = orjson.dumps({"run_id": "r", "partition": "d1", "slots": {
        "holders": {"arrival_id": "a", "version": 1, "value": record, "headers": []}}}).decode()
    slot = orjson.loads(mask_payload(planned, names))["slots"]["holders"]
    assert "Ada" not in slot["value"] and "4111" not in slot["value"]
    assert "visa" in slot["value"]
    hidden = mask_payload("h1,Ada,4111", names)
    assert "Ada" not in hidden and hidden.startswith("<withheld: 11 characters, not JSON")


def test_validation_reasons_never_show_a_sensitive_value() -> None:
    with pytest.raises(ValidationError) as e:
        Customer.model_validate({"id": "c", "day": "d", "email": "secret-no-at", "score": 1})
    why = describe_validation(e.value, "Customer", 1, sensitive_fields(Customer))
    assert "secret-no-at" not in why and "field 'email'" in why and "*** (sensitive)" in why
    with pytest.raises(ValidationError) as e:
        Customer.model_validate_json(b'{"id": "c", "email": "secret@x", ')
    why = describe_validation(e.value, "Customer", 1, sensitive_fields(Customer))
    assert "secret@x" not in why and "a record with sensitive fields" in why


@pytest.mark.parametrize("role", ["key", "partition_by", "event_time"])
def test_a_sensitive_field_cannot_be_the_key_partition_or_event_time(role: str) -> None:
    with pytest.raises(PipelineError, match=f"{role}='email' is a sensitive field of Customer"):
        Asset("customers", Customer, **{role: "email"})  # type: ignore[arg-type]


@pytest.mark.parametrize(("url", "shown"), [
    ("https://u:p@hooks.example/in?token=s3cret&team=7#sig=abc",
     "https://***@hooks.example/in?token=***&team=***#***"),
    ("http://127.0.0.1:9/alerts?s3cret", "http://127.0.0.1:9/alerts?***"),
    ("http://127.0.0.1:9/alerts", "http://127.0.0.1:9/alerts"),
])
def test_urls_in_logs_hide_credentials_and_query_tokens(url: str, shown: str) -> None:
    assert redact(url) == shown
