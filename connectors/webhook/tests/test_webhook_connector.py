"""The ``webhook`` source and sink, over real HTTP on 127.0.0.1."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from aiohttp import web
from pydantic import BaseModel
from streamflow_connector_files import read_rows
from streamflow_connector_webhook import (
    WebhookDeliveryError,
    WebhookSink,
    WebhookSinkConfig,
    WebhookSource,
    WebhookSourceConfig,
    idempotency_key,
)

from streamflow import Asset, ConnectorError, Pipeline, Settings, Worker, run_pipeline
from streamflow.connectors import ConnectorContext, SinkRecord, build_sink, build_source
from tests.helpers import read_topic, values, wait_for

Serve = Callable[..., AbstractAsyncContextManager[tuple[WebhookSource, httpx.AsyncClient]]]
JSON = {"Content-Type": "application/json"}


class Event(BaseModel):
    id: int
    name: str


EVENTS = Asset("events", Event)  # no key: the files sink keys rows by arrival id


def _rows(out: Path) -> list[dict[str, object]]:
    return read_rows(out)


# --- source, end to end through a worker on both transports --------------------------------


async def test_webhook_answers_202_after_publish_and_redelivery_is_idempotent(
    settings: Settings, tmp_path: Path, sign: Callable[..., dict[str, str]], secret: str
) -> None:
    out = tmp_path / "out"
    src = WebhookSource(WebhookSourceConfig.model_validate(
        {"signing_secret": secret, "path": "/hooks/events"}))
    p = Pipeline("hook")
    p.source(src, asset=EVENTS, name="hook")
    p.sink("files", asset=EVENTS, path=out)
    worker = Worker(p, settings)
    run = asyncio.create_task(worker.run())
    topic = EVENTS.topic(settings.namespace)
    try:
        await wait_for(lambda: src.port != 0 or run.done(), "the webhook to listen")
        assert not run.done(), run
        assert src.location == f"http://127.0.0.1:{src.port}/hooks/events"
        body = orjson.dumps([{"id": 1, "name": "ada"}, {"id": 2, "name": "bob"}])
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{src.port}", timeout=60) as c:
            r = await c.post("/hooks/events", content=body, headers=sign(body, "order-1"))
            assert r.status_code == 202, r.text
            assert r.json() == {"accepted": 2, "dead_lettered": 0, "request": "key:order-1"}
            # 202 means durable: the arrivals are already on the asset topic.
            published = await read_topic(settings, topic)
            assert sorted(orjson.loads(m.value)["id"] for m in published) == [1, 2]
            first_ids = {dict(m.headers)["sf-arrival-id"] for m in published}

            # a retry (signed afresh, as a sender does) gets 202 again, and the same ids
            again = await c.post("/hooks/events", content=body, headers=sign(body, "order-1"))
            assert again.status_code == 202 and again.json()["accepted"] == 2
            # one valid record and one that breaks the contract: still 202, one dead letter
            mixed_body = orjson.dumps([{"id": 3, "name": "cy"}, {"id": "three", "name": "x"}])
            mixed = await c.post("/hooks/events", content=mixed_body,
                                 headers=sign(mixed_body, "order-2"))
            assert mixed.status_code == 202
            assert (mixed.json()["accepted"], mixed.json()["dead_lettered"]) == (1, 1)
        await wait_for(lambda: len(_rows(out)) >= 3, "the files sink to hold 3 rows")
    finally:
        worker.request_stop()
        summary = await asyncio.wait_for(run, 120)

    assert (summary.records_in, summary.records_out, summary.dead_lettered) == (6, 5, 1)
    published = await read_topic(settings, topic)
    ids = [dict(m.headers)["sf-arrival-id"] for m in published]
    assert len(ids) == 5 and len(set(ids)) == 3, "the redelivery reused the same arrival ids"
    assert first_ids <= set(ids)
    rows = _rows(out)
    assert sorted(int(str(r["id"])) for r in rows) == [1, 2, 3], "one copy of each record"
    dead = values(await read_topic(settings, settings.dead_letter_topic))
    assert len(dead) == 1 and "field 'id'" in str(dead[0]["reason"])
    origin = dead[0]["origin"]
    assert isinstance(origin, dict) and origin["request"] == "key:order-2"
    assert (origin["webhook"], origin["index"]) == ("/hooks/events", 1)


# --- source, HTTP behaviour (an acking loop stands in for the engine) -----------------------


async def test_bearer_token_is_required(serving: Serve) -> None:
    async with serving(token="s3cret") as (_, c):
        missing = await c.post("/", json={"id": 1, "name": "a"})
        assert missing.status_code == 401 and "missing Authorization" in missing.json()["error"]
        assert missing.headers["WWW-Authenticate"] == "Bearer"
        wrong = await c.post("/", json={"id": 1, "name": "a"},
                             headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 401 and "invalid bearer token" in wrong.json()["error"]
        ok = await c.post("/", json={"id": 1, "name": "a"},
                          headers={"Authorization": "Bearer s3cret"})
        assert ok.status_code == 202 and ok.json()["accepted"] == 1


async def test_oversized_bodies_get_413(serving: Serve) -> None:
    big = orjson.dumps([{"id": i, "name": "x" * 50} for i in range(100)])
    assert len(big) > 2048
    async with serving(max_body_bytes=2048) as (_, c):
        r = await c.post("/", content=big, headers=JSON)
        assert r.status_code == 413 and "max_body_bytes=2048" in r.json()["error"]

        async def chunked() -> AsyncIterator[bytes]:  # no Content-Length: enforced while reading
            for i in range(0, len(big), 512):
                yield big[i:i + 512]

        r = await c.post("/", content=chunked(), headers=JSON)
        assert r.status_code == 413
        r = await c.post("/", json=[{"id": i, "name": "x"} for i in range(10)])
        assert r.status_code == 202, "a body under the limit still goes through"


@pytest.mark.parametrize(("body", "reason"), [
    (b"{not json", "body is not valid JSON"),
    (b'"just a string"', "expected a JSON object or an array of objects, got str"),
    (b'[{"id": 1}, 7]', "array item 1 is not a JSON object (got number)"),
])
async def test_bad_payloads_get_400_with_the_reason(serving: Serve, body: bytes,
                                                    reason: str) -> None:
    async with serving() as (_, c):
        r = await c.post("/", content=body, headers=JSON)
        assert r.status_code == 400
        assert reason in r.json()["error"]
        assert c.seen == []  # type: ignore[attr-defined]


async def test_record_ids_are_deterministic(serving: Serve) -> None:
    """From the webhook-id (unsigned here), the deprecated Idempotency-Key, or the body."""
    body = [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}]
    async with serving() as (_, c):
        for _ in range(2):
            for headers in ({"webhook-id": "k-1"}, {"Idempotency-Key": "k-2"}, {}):
                assert (await c.post("/", json=body, headers=headers)).status_code == 202
        seen: list[str] = c.seen  # type: ignore[attr-defined]
    assert seen[:4] == ["key:k-1:0", "key:k-1:1", "key:k-2:0", "key:k-2:1"]
    assert seen[4].startswith("body:") and seen[6:12] == seen[:6]


async def test_unpublished_requests_get_503_and_disconnects_do_not_hurt(serving: Serve) -> None:
    async with serving(ack=False, ack_timeout_s=0.5) as (src, c):
        r = await c.post("/", json={"id": 1, "name": "a"})
        assert r.status_code == 503 and "retry with the same webhook-id" in r.json()["error"]
        assert r.headers["Retry-After"] == "1"
        with pytest.raises(httpx.ReadTimeout):  # the client hangs up before the answer
            await c.post("/", json={"id": 2, "name": "b"}, timeout=0.1)
        await wait_for(lambda: src.waiting == 0, "the server to notice the hang-up")
        # nothing was published, so nothing must be yielded for either request
        gen = src.read()
        nxt = asyncio.ensure_future(anext(gen))
        r2 = asyncio.ensure_future(c.post("/", json={"id": 3, "name": "c"}))
        batch = await asyncio.wait_for(nxt, 30)
        assert [rec.data["id"] for rec in batch.records] == [3]
        await src.ack(batch)
        assert (await r2).status_code == 202
        await gen.aclose()


def test_webhook_config_errors_are_clear() -> None:
    with pytest.raises(ConnectorError, match="path 'hooks' must start with '/'"):
        build_source("webhook", {"path": "hooks"})
    with pytest.raises(ConnectorError, match="'ftp://x' must be an http"):
        build_sink("webhook", {"url": "ftp://x"})


# --- sink, against a real local HTTP server ----------------------------------------------


@dataclass
class Receiver:
    """A local HTTP endpoint that answers with scripted statuses, then 200."""

    statuses: list[int] = field(default_factory=list)
    always: int | None = None
    requests: list[tuple[str, list[dict[str, object]]]] = field(default_factory=list)
    url: str = ""

    async def handle(self, request: web.Request) -> web.Response:
        body = orjson.loads(await request.read())
        self.requests.append((request.headers.get("Idempotency-Key", ""), body))
        status = self.always or (self.statuses.pop(0) if self.statuses else 200)
        return web.json_response({"status": status}, status=status)


@asynccontextmanager
async def receiver(**kw: object) -> AsyncIterator[Receiver]:
    rx = Receiver(**kw)  # type: ignore[arg-type]
    app = web.Application()
    app.router.add_post("/ingest", rx.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    rx.url = f"http://127.0.0.1:{runner.addresses[0][1]}/ingest"
    try:
        yield rx
    finally:
        await runner.cleanup()


def _sink_pipeline(tmp_path: Path, url: str, **config: Any) -> Pipeline:
    people = Asset("people", Event, key="id")
    landing = tmp_path / "landing"
    landing.mkdir()
    (landing / "people.jsonl").write_bytes(
        b"".join(b'{"id": %d, "name": "n%d"}\n' % (i, i) for i in range(1, 4)))
    p = Pipeline("to-webhook")
    p.source("files", asset=people, path=landing, format="jsonl", settle_s=0)
    p.sink("webhook", asset=people, url=url, retry_backoff_s=0.01, **config)
    return p


async def test_sink_retries_a_503_with_the_same_idempotency_key(
    settings: Settings, tmp_path: Path
) -> None:
    async with receiver(statuses=[503]) as rx:
        summary = await run_pipeline(_sink_pipeline(tmp_path, rx.url, envelope=True), settings)
    assert (summary.records_out, summary.dead_lettered) == (3, 0)
    assert summary.outputs == {"webhook-people": rx.url}
    (key0, body0), (key1, body1) = rx.requests[:2]
    assert key0 == key1 and key0.startswith("sf-") and body0 == body1, "a retry is the same POST"
    delivered = [item for _, body in rx.requests[1:] for item in body]
    assert sorted(int(str(d["key"])) for d in delivered) == [1, 2, 3]
    assert all(set(d) == {"key", "arrival_id", "partition", "value"} for d in delivered)
    assert len(rx.requests) == 1 + len({k for k, _ in rx.requests}), "one retry, no other"


async def test_sink_gives_up_on_a_permanent_500_and_dead_letters(
    settings: Settings, tmp_path: Path
) -> None:
    async with receiver(always=500) as rx:
        summary = await run_pipeline(_sink_pipeline(tmp_path, rx.url, max_retries=2), settings)
    assert (summary.records_out, summary.dead_lettered) == (0, 3)
    keys = [k for k, _ in rx.requests]
    assert len(keys) % 3 == 0 and all(keys.count(k) == 3 for k in keys), "1 try + 2 retries"
    dead = values(await read_topic(settings, settings.dead_letter_topic))
    assert sorted(orjson.loads(str(d["payload"]))["id"] for d in dead) == [1, 2, 3]
    for d in dead:
        reason = str(d["reason"])
        assert rx.url in reason and "HTTP 500" in reason and "after 3 attempts" in reason
        assert d["error"]["type"] == "WebhookDeliveryError"  # type: ignore[index]


async def test_sink_does_not_retry_a_4xx_and_batches_by_size(tmp_path: Path) -> None:
    recs = [SinkRecord(str(i), f"a{i}", "default", {"id": i}) for i in range(5)]
    ctx = ConnectorContext("hook-out", "events", str(tmp_path))
    async with receiver(statuses=[422]) as rx:
        sink = WebhookSink(WebhookSinkConfig(url=rx.url, batch_size=2, retry_backoff_s=0.01,
                                             headers={"X-Tenant": "acme"}))
        await sink.setup(ctx)
        with pytest.raises(WebhookDeliveryError, match=r"refused with HTTP 422.*not retried"):
            await sink.write(recs)
        assert len(rx.requests) == 1
        await sink.write(recs)  # the failed batch is not resent: the engine dead-lettered it
        await sink.flush()
        await sink.stop()
    bodies = [b for _, b in rx.requests[1:]]
    assert bodies == [[{"id": 0}, {"id": 1}], [{"id": 2}, {"id": 3}], [{"id": 4}]]
    assert idempotency_key(recs[:2]) == idempotency_key(list(reversed(recs[:2])))
    assert [k for k, _ in rx.requests[1:]] == [idempotency_key(recs[i:i + 2]) for i in (0, 2, 4)]

