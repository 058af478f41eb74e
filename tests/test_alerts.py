"""Alert sinks against a real local HTTP endpoint: delivery, retries, give-up, fan-out."""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import orjson
import pytest
from aiohttp import web

from streamflow.errors import AlertDeliveryError
from streamflow.gates import Alert, LogAlerts, WebhookAlerts
from streamflow.gates.runtime import Alerter, alert_sinks_from_env

ALERT = Alert(kind="gate-held", pipeline="retail", stage="orders_clean", partition="2024-05-01",
              run_id="r1", summary="2 of 3 checks failed",
              checks=[{"name": "not_null", "passed": False}], at_ms=1_700_000_000_000,
              trace_id="ab" * 16)


@dataclass
class Receiver:
    """Answers with scripted (status, headers), then 200; records every request."""

    script: list[tuple[int, dict[str, str]]] = field(default_factory=list)
    requests: list[tuple[str, dict[str, object], float]] = field(default_factory=list)
    url: str = ""

    async def handle(self, request: web.Request) -> web.Response:
        body = orjson.loads(await request.read())
        self.requests.append((request.headers.get("Idempotency-Key", ""), body, time.monotonic()))
        status, headers = self.script.pop(0) if self.script else (200, {})
        return web.json_response({"status": status}, status=status, headers=headers)


@asynccontextmanager
async def receiver(*script: tuple[int, dict[str, str]]) -> AsyncIterator[Receiver]:
    rx = Receiver(list(script))
    app = web.Application()
    app.router.add_post("/alerts", rx.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    rx.url = f"http://127.0.0.1:{runner.addresses[0][1]}/alerts"
    try:
        yield rx
    finally:
        await runner.cleanup()


def _dead_port() -> int:
    with socket.socket() as s:  # bound then closed: nothing listens there
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_dedupe_key_is_stable_and_ignores_the_text() -> None:
    other = Alert("gate-held", "retail", "orders_clean", "2024-05-01", "r1", "reworded", at_ms=5)
    assert ALERT.dedupe_key == other.dedupe_key and len(ALERT.dedupe_key) == 32
    assert ALERT.dedupe_key != Alert("gate-released", "retail", "orders_clean", "2024-05-01",
                                     "r1", "ok").dedupe_key
    js = ALERT.to_json()
    assert js["checks"] == ALERT.checks and js["dedupe_key"] == ALERT.dedupe_key
    assert orjson.loads(orjson.dumps(js)) == js


async def test_webhook_delivers_the_json_body_with_an_idempotency_key() -> None:
    async with receiver() as rx:
        sink = WebhookAlerts(rx.url, headers={"X-Tenant": "acme"})
        await sink.send(ALERT)
        await sink.close()
    [(key, body, _)] = rx.requests
    assert key == ALERT.dedupe_key
    assert body == ALERT.to_json()


async def test_webhook_retries_503s_with_the_same_key_then_succeeds() -> None:
    async with receiver((503, {}), (503, {})) as rx:
        sink = WebhookAlerts(rx.url, retry_backoff_s=0.01)
        await sink.send(ALERT)
        await sink.close()
    assert len(rx.requests) == 3
    assert {k for k, _, _ in rx.requests} == {ALERT.dedupe_key}


async def test_webhook_honours_retry_after() -> None:
    async with receiver((429, {"Retry-After": "0.3"})) as rx:
        sink = WebhookAlerts(rx.url, retry_backoff_s=0.001)
        await sink.send(ALERT)
        await sink.close()
    (_, _, t0), (_, _, t1) = rx.requests
    assert t1 - t0 >= 0.28, "waited Retry-After, not the tiny backoff"


async def test_a_400_is_not_retried_and_the_alerter_logs_instead_of_raising(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async with receiver((400, {})) as rx:
        alerter = Alerter([WebhookAlerts(rx.url, retry_backoff_s=0.01)])
        with caplog.at_level(logging.ERROR, logger="streamflow.alerts"):
            alerter.emit(ALERT)
            await alerter.close()
    assert len(rx.requests) == 1
    assert (alerter.sent, alerter.failed) == (0, 1)
    [rec] = [r for r in caplog.records if r.levelno == logging.ERROR]
    msg = rec.getMessage()
    assert rec.name == "streamflow.alerts"
    assert "webhook http://127.0.0.1" in msg and "gate-held" in msg and "orders_clean" in msg
    assert "HTTP 400" in msg and "not retried" in msg


async def test_webhook_gives_up_on_a_dead_port() -> None:
    sink = WebhookAlerts(f"http://127.0.0.1:{_dead_port()}/x", max_retries=3,
                         retry_backoff_s=0.001, timeout_s=1.0)
    t0 = time.monotonic()
    with pytest.raises(AlertDeliveryError, match=r"after 4 attempts; last error: Client"):
        await sink.send(ALERT)
    await sink.close()
    assert time.monotonic() - t0 < 1.0


async def test_log_alerts_warn_on_streamflow_alerts(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="streamflow.alerts"):
        await LogAlerts().send(ALERT)
    [rec] = caplog.records
    assert (rec.name, rec.levelno) == ("streamflow.alerts", logging.WARNING)
    assert rec.getMessage() == "ALERT stage orders_clean: 2 of 3 checks failed"
    assert rec.alert == ALERT.to_json()  # type: ignore[attr-defined]


class SlowSink:
    name = "slow"

    def __init__(self) -> None:
        self.got: list[Alert] = []
        self.closed = False

    async def send(self, alert: Alert) -> None:
        await asyncio.sleep(1.0)
        self.got.append(alert)

    async def close(self) -> None:
        self.closed = True


async def test_emit_does_not_block_and_flush_waits() -> None:
    slow = SlowSink()
    alerter = Alerter([slow, LogAlerts()])
    t0 = time.monotonic()
    alerter.emit(ALERT)
    assert time.monotonic() - t0 < 0.05 and slow.got == []
    await alerter.flush()
    assert slow.got == [ALERT] and (alerter.sent, alerter.failed) == (2, 0)
    await alerter.close()
    assert slow.closed


async def test_close_cancels_stuck_deliveries_and_counts_them(
    caplog: pytest.LogCaptureFixture,
) -> None:
    slow = SlowSink()
    alerter = Alerter([slow])
    alerter.emit(ALERT)
    with caplog.at_level(logging.ERROR, logger="streamflow.alerts"):
        await alerter.close(timeout_s=0.05)
        alerter.emit(ALERT)  # after close: dropped, counted, logged
    assert (alerter.sent, alerter.failed) == (0, 2) and slow.got == [] and slow.closed
    assert "cancelled" in caplog.records[0].getMessage()


def test_alert_sinks_from_env() -> None:
    [only] = alert_sinks_from_env({})
    assert isinstance(only, LogAlerts)
    sinks = alert_sinks_from_env(
        {"STREAMFLOW_ALERT_WEBHOOK": "https://a.example/hook, http://u:pw@b.example/h,"})
    assert [type(s) for s in sinks] == [LogAlerts, WebhookAlerts, WebhookAlerts]
    assert [s.name for s in sinks[1:]] == ["webhook https://a.example/hook",
                                           "webhook http://***@b.example/h"]
    with pytest.raises(ValueError, match="ftp://x"):
        alert_sinks_from_env({"STREAMFLOW_ALERT_WEBHOOK": "ftp://x"})
