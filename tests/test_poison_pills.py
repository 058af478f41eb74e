"""Poison pills: input that once crashed the worker, or could not be dead-lettered, now ends as
a named dead letter on both transports, and the worker goes on with the next record."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path
from typing import Any

import httpx
import orjson
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from pydantic import BaseModel
from streamflow_connector_files import read_rows
from streamflow_connector_webhook import WebhookSource, WebhookSourceConfig

from streamflow import (
    AllOf,
    Asset,
    Inputs,
    Pipeline,
    Settings,
    Window,
    WindowRecords,
    Worker,
    run_pipeline,
)
from streamflow.connectors.testing import MemorySink
from streamflow.model import H_PLANNED, MAX_DEAD_LETTER_BYTES, OutMessage, replay_topic
from streamflow.ops import list_dead_letters, whole_payload
from streamflow.transports import make_transport

from .helpers import memory_source, read_topic, wait_for
from .pipelines.echo import Person
from .test_bad_input import _aged, echo_pipeline

JSON = {"Content-Type": "application/json"}


def deep(levels: int) -> bytes:
    """A record whose name is a list nested ``levels`` deep: orjson reads up to 1024 levels
    and writes up to 254."""
    return b'{"id": 1, "name": ' + b"[" * levels + b'"x"' + b"]" * levels + b"}"


async def _dead(settings: Settings) -> list[dict[str, Any]]:
    return [orjson.loads(m.value) for m in await read_topic(settings, settings.dead_letter_topic)]


# --- nesting beyond 254 levels ------------------------------------------------------------


async def test_a_deeply_nested_file_record_is_dead_lettered(settings: Settings,
                                                            tmp_path: Path) -> None:
    landing = tmp_path / "landing"
    landing.mkdir()
    _aged(landing / "deep.jsonl", deep(300) + b'\n{"id": 2, "name": "bob"}\n')

    summary = await run_pipeline(echo_pipeline(tmp_path), settings)

    assert (summary.records_in, summary.records_out, summary.dead_lettered) == (2, 1, 1)
    [dead] = await _dead(settings)
    assert dead["origin"] == {"file": "deep.jsonl", "line": 1}
    assert "deep.jsonl line 1" in dead["reason"] and "field 'name'" in dead["reason"]
    assert str(dead["payload"]).startswith('{"id":1,"name":[[[[')
    assert str(dead["payload"]).count("[") == 300
    assert (landing / "processed" / "deep.jsonl").exists()


async def test_a_deeply_nested_webhook_record_is_dead_lettered(settings: Settings,
                                                               tmp_path: Path) -> None:
    events = Asset("events", Person, key="id")
    src = WebhookSource(WebhookSourceConfig())
    p = Pipeline("deep-hook")
    p.source(src, asset=events, name="hook")
    p.sink("files", asset=events, path=tmp_path / "out")
    worker = Worker(p, settings)
    run = asyncio.create_task(worker.run())
    try:
        await wait_for(lambda: src.port != 0 or run.done(), "the webhook to listen")
        async with httpx.AsyncClient(base_url=src.location, timeout=60) as c:
            r = await c.post("", content=b"[" + deep(1000) + b"]", headers=JSON)
            assert r.status_code == 202, r.text
            assert r.json()["dead_lettered"] == 1
            ok = await c.post("", json={"id": 2, "name": "bob"})
            assert ok.status_code == 202 and ok.json()["accepted"] == 1
            dup = await c.post("", content=b'[{"id": 3, "name": "cy"}, {"id": 4, "id": 5, '
                               b'"name": "di"}]', headers={**JSON, "webhook-id": "dup-1"})
            assert dup.status_code == 202, dup.text
            assert (dup.json()["accepted"], dup.json()["dead_lettered"]) == (1, 1)
        await wait_for(lambda: len(read_rows(tmp_path / "out")) == 2, "the good records")
    finally:
        worker.request_stop()
        summary = await asyncio.wait_for(run, 120)
    assert summary.dead_lettered == 2
    deep_one, dup_one = sorted(await _dead(settings), key=lambda d: d["origin"]["request"])
    assert deep_one["origin"]["index"] == 0 and "field 'name'" in deep_one["reason"]
    assert str(deep_one["payload"]).count("[") == 1000
    assert dup_one["origin"] == {"webhook": "/", "request": "key:dup-1", "index": 1}
    assert "request key:dup-1 item 1: the name 'id' appears twice" in dup_one["reason"]


async def test_poison_pills_on_a_foreign_topic_are_dead_lettered(
        settings: Settings, kafka_bootstrap: str, tmp_path: Path) -> None:
    """The kafka source: a deep record, a duplicate name, a tombstone and a record above the
    limit among good ones. Each dead letter names topic, partition and offset."""
    src = f"ext-pills-{uuid.uuid4().hex[:8]}"
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(src, 1, 1)])
    finally:
        await admin.close()
    big = orjson.dumps({"id": 6, "name": "z" * 300_000})
    rows = [b'{"id": 1, "name": "ada"}', deep(500), b'{"id": 3, "id": 4, "name": "cy"}', None,
            big, b'{"id": 7, "name": "eve"}']
    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all")
    await producer.start()
    try:
        for i, value in enumerate(rows):
            await producer.send_and_wait(src, value, key=str(i).encode())
    finally:
        await producer.stop()
    people = Asset("people", Person, key="id")
    p = Pipeline("pills")
    p.source("kafka", asset=people, bootstrap=kafka_bootstrap, topic=src)
    p.sink("files", asset=people, path=tmp_path / "out")

    summary = await run_pipeline(p, settings)

    assert (summary.records_in, summary.records_out, summary.dead_lettered) == (6, 2, 4)
    assert sorted(int(str(r["id"])) for r in read_rows(tmp_path / "out")) == [1, 7]
    dead = {d["origin"]["offset"]: d for d in await _dead(settings)}
    assert sorted(dead) == [1, 2, 3, 4]
    assert all(d["origin"]["topic"] == src and f"{src}" in d["reason"] for d in dead.values())
    assert "field 'name'" in dead[1]["reason"] and str(dead[1]["payload"]).count("[") == 500
    assert "the name 'id' appears twice" in dead[2]["reason"]
    assert "tombstone" in dead[3]["reason"]
    assert "exceeds max_record_bytes" in dead[4]["reason"]


# --- size: records above the limit, dead letters inflated by escaping ----------------------


async def test_a_source_record_above_max_record_bytes_is_dead_lettered_whole(
        settings: Settings, tmp_path: Path) -> None:
    """1.2 MB is above the broker's message size: published as an arrival it crashed the
    worker; its dead letter keeps a truncated payload and the whole one in the side store."""
    landing = tmp_path / "landing"
    landing.mkdir()
    name = "y" * 1_200_000
    line = orjson.dumps({"id": 1, "name": name})
    _aged(landing / "big.jsonl", line + b'\n{"id": 2, "name": "bob"}\n')

    summary = await run_pipeline(echo_pipeline(tmp_path), settings)

    assert (summary.records_out, summary.dead_lettered) == (1, 1)
    [dead] = await _dead(settings)
    assert "big.jsonl line 1" in dead["reason"]
    assert "exceeds max_record_bytes" in dead["reason"]
    assert len(orjson.dumps(dead)) <= MAX_DEAD_LETTER_BYTES
    assert dead["truncated"]["bytes"] == len(line)
    assert line.decode().startswith(dead["payload"])
    [entry] = await list_dead_letters(settings)
    assert await whole_payload(settings, entry) == line.decode()


async def test_a_dead_letter_inflated_by_escaping_keeps_where_the_whole_record_is(
        settings: Settings, tmp_path: Path) -> None:
    """A 700 kB value of control characters grows sixfold as a JSON string: its dead letter
    would pass the broker's limit. It names the offset that holds the whole record."""
    ns = settings.namespace
    t = make_transport(settings)
    await t.start()
    value = b"\x01" * 700_000
    try:
        await t.ensure_topics([f"{ns}.people"])
        await t.publish([OutMessage(f"{ns}.people", value, b"k", [])])
    finally:
        await t.close()
    (tmp_path / "landing").mkdir()
    _aged(tmp_path / "landing" / "ok.jsonl", b'{"id": 7, "name": "ok"}\n')

    summary = await run_pipeline(echo_pipeline(tmp_path), settings)

    assert (summary.records_out, summary.dead_lettered, summary.drained) == (1, 1, True)
    [dead] = await _dead(settings)
    assert "exceeds max_record_bytes" in dead["reason"]
    whole = dead["truncated"]["whole"]
    assert whole["topic"] == f"{ns}.people" and whole["offset"] == dead["origin"]["offset"]
    [entry] = await list_dead_letters(settings)
    assert await whole_payload(settings, entry) == value.decode()


async def test_a_source_dead_letter_inflated_by_escaping_goes_to_the_side_store(
        settings: Settings, tmp_path: Path) -> None:
    landing = tmp_path / "landing"
    landing.mkdir()
    line = b'{"id": "one", "name": "' + b"\\u0001" * 150_000 + b'"}'
    _aged(landing / "esc.jsonl", line + b"\n")

    summary = await run_pipeline(echo_pipeline(tmp_path), settings)

    assert summary.dead_lettered == 1
    [dead] = await _dead(settings)
    assert "esc.jsonl line 1" in dead["reason"] and "field 'id'" in dead["reason"]
    assert dead["truncated"]["whole"]["topic"] == f"{settings.dead_letter_topic}.payloads"
    [entry] = await list_dead_letters(settings)
    whole = await whole_payload(settings, entry)
    assert orjson.loads(whole) == orjson.loads(line)


# --- tombstones and unreadable planned runs ------------------------------------------------


class Order(BaseModel):
    id: int
    day: str


class Pair(BaseModel):
    day: str
    a: int
    b: int


class Count(BaseModel):
    day: str
    n: int


async def test_tombstones_on_asset_topics_are_dead_lettered(settings: Settings) -> None:
    """A null value on each kind of input: a map, a barrier, a window and a sink."""
    a, b = Asset("a", Order, key="id", partition_by="day"), Asset("b", Order, key="id",
                                                                    partition_by="day")
    pairs, counts = Asset("pairs", Pair, key="day"), Asset("counts", Count, key="day")
    mapped = Asset("mapped", Order, key="id", partition_by="day")
    p = Pipeline("tombstones")
    p.source(memory_source([[{"id": 1, "day": "d1"}]]), asset=a, name="a-src")
    p.source(memory_source([[{"id": 1, "day": "d1"}]]), asset=b, name="b-src")
    p.stage(inputs=[a], output=mapped, name="copy")(lambda o: o)

    @p.stage(inputs=[mapped, b], output=pairs, trigger=AllOf())
    def pair(x: Inputs) -> Pair:
        return Pair(day=x[mapped].day, a=x[mapped].id, b=x[b].id)  # type: ignore[attr-defined]

    @p.stage(inputs=[b], output=counts, trigger=Window(size_s=60), name="per_minute")
    def per_minute(w: WindowRecords) -> Count:
        return Count(day=w.partition, n=len(w["b"]))

    sink = MemorySink()
    p.sink(sink, asset=pairs)
    ns = settings.namespace
    tombstoned = [f"{ns}.a", f"{ns}.mapped", f"{ns}.b", f"{ns}.pairs"]
    t = make_transport(settings)
    await t.start()
    try:
        await t.ensure_topics(tombstoned)
        await t.publish([OutMessage(topic, b"", b"gone", []) for topic in tombstoned])
    finally:
        await t.close()

    summary = await run_pipeline(p, settings)

    assert summary.drained
    dead = await _dead(settings)
    reasons = sorted(str(d["reason"]) for d in dead)
    assert len(reasons) == 5, reasons  # b feeds two stages
    assert all("tombstone" in r for r in reasons), reasons
    assert {d["stage"] for d in dead} == {"copy", "pair", "per_minute", "memorysink-pairs"}
    assert all(f"{ns}." in r and "@" in r for r in reasons), "names topic, partition, offset"
    assert len(sink.rows) == 1


async def test_an_unreadable_planned_run_is_dead_lettered(settings: Settings) -> None:
    a, b = Asset("a", Order, key="id", partition_by="day"), Asset("b", Order, key="id",
                                                                    partition_by="day")
    pairs = Asset("pairs", Pair, key="day")
    p = Pipeline("planned")
    p.source(memory_source([[{"id": 1, "day": "d1"}]]), asset=a, name="a-src")
    p.source(memory_source([[{"id": 1, "day": "d1"}]]), asset=b, name="b-src")

    @p.stage(inputs=[a, b], output=pairs, trigger=AllOf())
    def pair(x: Inputs) -> Pair:
        return Pair(day=x[a].day, a=x[a].id, b=x[b].id)  # type: ignore[attr-defined]

    sink = MemorySink()
    p.sink(sink, asset=pairs)
    retry = replay_topic(settings.namespace, "pair")
    t = make_transport(settings)
    await t.start()
    try:
        await t.ensure_topics([retry])
        await t.publish([OutMessage(retry, b'{"slots": 3', b"k",
                                    [(H_PLANNED, b"1"), ("sf-attempt", b"2")])])
    finally:
        await t.close()

    summary = await run_pipeline(p, settings)

    assert summary.drained and len(sink.rows) == 1
    [dead] = await _dead(settings)
    assert "unreadable planned run" in dead["reason"] and retry in dead["reason"]
    assert dead["payload"] == '{"slots": 3'
    assert dead["origin"]["topic"] == retry
