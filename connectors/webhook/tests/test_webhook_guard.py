"""The webhook source against misuse, over real HTTP(S) on 127.0.0.1: Standard Webhooks
signatures, idempotency keys bound to their body for every worker, TLS, 415, rate and
concurrency limits, authentication beyond loopback, and secrets kept out of every output."""

from __future__ import annotations

import asyncio
import base64
import logging
import ssl
import time
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from pathlib import Path

import httpx
import orjson
import pytest
from pydantic import BaseModel
from streamflow_connector_webhook import WebhookSource, WebhookSourceConfig
from streamflow_connector_webhook._guard import Refused, check_signature

from streamflow import Asset, ConnectorError, Pipeline, Settings, Worker
from streamflow.connectors import ConnectorContext, build_source
from tests.helpers import read_topic

Serve = Callable[..., AbstractAsyncContextManager[tuple[WebhookSource, httpx.AsyncClient]]]
Sign = Callable[..., dict[str, str]]
BODY = b'[{"id": 1, "name": "a"}, {"id": 2, "name": "b"}]'


class Event(BaseModel):
    id: int
    name: str


def test_the_standard_webhooks_test_vector_verifies() -> None:
    """The example of the Standard Webhooks specification, byte for byte."""
    key = base64.b64decode("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")
    headers = {"webhook-id": "msg_p5jXN8AQM9LWM0D4loKWxJek", "webhook-timestamp": "1614265330",
               "webhook-signature": "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="}
    body = b'{"test": 2432232314}'
    assert check_signature(headers, body, key, 300, now=1614265330 + 299) == headers["webhook-id"]
    with pytest.raises(Refused, match="is 301s old"):
        check_signature(headers, body, key, 300, now=1614265330 + 301)
    with pytest.raises(Refused, match="no webhook-signature matches"):
        check_signature(headers, body + b" ", key, 300, now=1614265330)


async def test_signatures_are_checked(serving: Serve, sign: Sign, secret: str) -> None:
    other = "whsec_" + base64.b64encode(b"another-secret-of-32-bytes-long!").decode()
    async with serving(signing_secret=secret) as (_, c):
        r = await c.post("/", content=BODY, headers={"Content-Type": "application/json"})
        assert r.status_code == 401
        assert "missing webhook-id, webhook-timestamp, webhook-signature" in r.json()["error"]
        bad = [
            (sign(BODY, "m1", secret=other), "no webhook-signature matches"),
            ({**sign(BODY, "m1"), "webhook-id": "m2"}, "no webhook-signature matches"),
            (sign(BODY, "m1", ts=int(time.time()) - 301), "old (tolerance 300s)"),
            (sign(BODY, "m1", ts=int(time.time()) + 400), "in the future"),
            ({**sign(BODY, "m1"), "webhook-timestamp": "soon"}, "whole seconds"),
        ]
        for headers, why in bad:
            r = await c.post("/", content=BODY, headers=headers)
            assert r.status_code == 401 and why in r.json()["error"], (headers, r.text)
        r = await c.post("/", content=BODY + b" ", headers=sign(BODY, "m1"))
        assert r.status_code == 401, "the signature covers the exact bytes"
        # Several signatures (a sender rotating its key): one match is enough.
        rotated = sign(BODY, "m1", extra="v1,bm90IHRoaXMgb25l v1a,ed25519stuff")
        r = await c.post("/", content=BODY, headers=rotated)
        assert r.status_code == 202 and r.json()["request"] == "key:m1"
        r = await c.post("/", content=BODY, headers=sign(BODY, "m3", ts=int(time.time()) - 250))
        assert r.status_code == 202, "inside the tolerance"
        assert c.seen[:2] == ["key:m1:0", "key:m1:1"]  # type: ignore[attr-defined]


async def test_a_webhook_id_reused_with_another_body_gets_422(serving: Serve, sign: Sign,
                                                              secret: str) -> None:
    other = b'[{"id": 9, "name": "z"}]'
    async with serving(signing_secret=secret) as (_, c):
        assert (await c.post("/", content=BODY, headers=sign(BODY, "k"))).status_code == 202
        r = await c.post("/", content=other, headers=sign(other, "k"))
        assert r.status_code == 422
        assert "webhook-id 'k' was used with a different body within the last 24h" \
            in r.json()["error"]
        assert (await c.post("/", content=BODY, headers=sign(BODY, "k"))).status_code == 202
        # A body refused as 400 binds nothing: the sender may fix it and reuse the id.
        assert (await c.post("/", content=b"{oops", headers=sign(b"{oops", "j"))).status_code \
            == 400
        assert (await c.post("/", content=other, headers=sign(other, "j"))).status_code == 202
        assert len(c.seen) == 5  # type: ignore[attr-defined]


async def test_a_reused_webhook_id_is_refused_by_every_worker(
    settings: Settings, sign: Sign, secret: str
) -> None:
    """Two workers of one pipeline (a load balancer in front): the claim is on the log."""
    events = Asset("events", Event)
    workers, sources = [], []
    for _ in range(2):
        src = WebhookSource(WebhookSourceConfig(signing_secret=secret))  # type: ignore[arg-type]
        p = Pipeline("hook2")
        p.source(src, asset=events, name="hook")
        workers.append(Worker(p, settings))
        sources.append(src)
    runs: list[asyncio.Task[object]] = []
    other = b'[{"id": 7, "name": "x"}]'
    try:
        # One after the other: two embedded logs opening a new file at once race to switch it
        # to WAL (SQLite refuses the loser at once).
        for src, w in zip(sources, workers, strict=True):
            run = asyncio.create_task(w.run())
            runs.append(run)  # type: ignore[arg-type]
            await _wait_for(lambda s=src, r=run: s.port != 0 or r.done())  # type: ignore[misc]
            assert not run.done(), run
        a, b = (f"http://127.0.0.1:{s.port}/" for s in sources)
        async with httpx.AsyncClient(timeout=60) as c:
            assert (await c.post(a, content=BODY, headers=sign(BODY, "evt-1"))).status_code \
                == 202
            r = await c.post(b, content=other, headers=sign(other, "evt-1"))
            assert r.status_code == 422, r.text
            r = await c.post(b, content=BODY, headers=sign(BODY, "evt-1"))
            assert r.status_code == 202, "a retry of the same body passes on any worker"
            r = await c.post(a, content=other, headers=sign(other, "evt-2"))
            assert r.status_code == 202
    finally:
        for w in workers:
            w.request_stop()
        await asyncio.wait_for(asyncio.gather(*runs), 120)
    published = await read_topic(settings, events.topic(settings.namespace))
    assert sorted(orjson.loads(m.value)["id"] for m in published) == [1, 1, 2, 2, 7]


async def _wait_for(cond: Callable[[], bool], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.05)


@pytest.mark.parametrize("ctype", ["text/plain", "application/x-www-form-urlencoded", None])
async def test_a_wrong_content_type_gets_415(serving: Serve, ctype: str | None) -> None:
    async with serving() as (_, c):
        headers = {"Content-Type": ctype} if ctype else {}
        r = await c.post("/", content=b'{"id": 1, "name": "a"}', headers=headers)
        assert r.status_code == 415 and "must be application/json" in r.json()["error"]
        ok = {"Content-Type": "application/cloudevents+json; charset=utf-8"}
        assert (await c.post("/", content=b'{"id": 1}', headers=ok)).status_code == 202


async def test_each_client_is_rate_limited_with_retry_after(serving: Serve) -> None:
    async with serving(rate_limit_per_s=0.5, rate_burst=2) as (_, c):
        for _ in range(2):
            assert (await c.post("/", json={"id": 1})).status_code == 202
        r = await c.post("/", json={"id": 1})
        assert r.status_code == 429 and r.headers["Retry-After"] == "2"
        assert "more than 0.5 requests a second from 127.0.0.1" in r.json()["error"]


async def test_requests_beyond_max_concurrent_get_503_with_retry_after(serving: Serve) -> None:
    async with serving(ack=False, max_concurrent=1, ack_timeout_s=10) as (src, c):
        first = asyncio.ensure_future(c.post("/", json={"id": 1}))
        await _wait_for(lambda: src.waiting == 1)
        r = await c.post("/", json={"id": 2})
        assert r.status_code == 503 and r.headers["Retry-After"] == "1"
        assert "max_concurrent" in r.json()["error"]
        first.cancel()
        await asyncio.gather(first, return_exceptions=True)


def test_listening_beyond_loopback_needs_authentication_or_an_explicit_waiver() -> None:
    with pytest.raises(ConnectorError) as e:
        build_source("webhook", {"host": "0.0.0.0"})
    msg = str(e.value)
    assert "'0.0.0.0' is reachable beyond loopback" in msg
    assert "set signing_secret" in msg and "allow_unauthenticated: true" in msg
    for ok in ({"allow_unauthenticated": True}, {"token": "t0k3n-value"},
               {"signing_secret": "whsec_" + base64.b64encode(b"k" * 24).decode()}):
        assert isinstance(build_source("webhook", {"host": "0.0.0.0", **ok}), WebhookSource)
    for local in ("127.0.0.1", "::1", "localhost"):
        assert isinstance(build_source("webhook", {"host": local}), WebhookSource)


def test_old_and_malformed_settings_get_clear_errors() -> None:
    with pytest.raises(ConnectorError, match=r"hmac_secret .* was removed: set signing_secret"):
        build_source("webhook", {"hmac_secret": "k3y"})
    with pytest.raises(ConnectorError, match="tls_cert and tls_key go together"):
        build_source("webhook", {"tls_cert": "/x/cert.pem", "token": "sup3r-s3cret-t0ken"})


async def test_tls_serves_https(serving: Serve, tls_files: tuple[Path, Path],
                                tmp_path: Path) -> None:
    cert, key = tls_files
    trust = ssl.create_default_context(cafile=str(cert))
    async with serving(tls_cert=cert, tls_key=key, client={"verify": trust}) as (src, c):
        assert src.location.startswith("https://127.0.0.1:")
        r = await c.post("/", json={"id": 1, "name": "a"})
        assert r.status_code == 202 and r.json()["accepted"] == 1
        async with httpx.AsyncClient(timeout=10) as plain:
            with pytest.raises(httpx.HTTPError):  # plain HTTP to the TLS port goes nowhere
                await plain.post(f"http://127.0.0.1:{src.port}/", json={"id": 2})
    missing = build_source("webhook", {"tls_cert": str(cert), "tls_key": str(tmp_path / "no")})
    with pytest.raises(ConnectorError, match=r"cannot load tls_cert .* with tls_key"):
        await missing.setup(ConnectorContext("hook", "events", str(tmp_path)))


async def test_secrets_stay_out_of_logs_errors_and_reprs(
    serving: Serve, sign: Sign, secret: str, caplog: pytest.LogCaptureFixture
) -> None:
    token = "t0ken-that-must-not-leak"
    caplog.set_level(logging.DEBUG)
    shown: list[str] = []
    async with serving(signing_secret=secret, token=token) as (src, c):
        shown += [repr(src.cfg), str(src.cfg), src.cfg.model_dump_json(), src.location]
        for headers in ({"Authorization": "Bearer wrong"},
                        {"Authorization": f"Bearer {token}", **sign(BODY, "m", secret=secret)}):
            r = await c.post("/", content=BODY, headers={"Content-Type": "application/json",
                                                          **headers})
            shown.append(r.text)
        assert r.status_code == 202
    for bad in ({"host": "0.0.0.0", "tls_cert": "c.pem", "token": token},
                {"signing_secret": "whsec_not-base64!" + token}):
        with pytest.raises(ConnectorError) as e:
            build_source("webhook", bad)
        shown.append(str(e.value))
        with pytest.raises(ValueError) as ve:
            WebhookSourceConfig(**bad)  # type: ignore[arg-type]
        shown.append(str(ve.value))
    text = "\n".join([*shown, caplog.text])
    assert "setting 'signing_secret': Value error, signing_secret must be whsec_" in text
    assert "tls_cert and tls_key go together" in text
    for leak in (token, secret, secret.removeprefix("whsec_")):
        assert leak not in text
