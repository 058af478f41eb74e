"""The worker's HTTP port on both transports: /healthz, /readyz, /metrics (scraped with a real
HTTP client and checked against the work done), /status and ``streamflow status``."""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import AsyncGenerator
from pathlib import Path

import httpx
import pytest
from pydantic import SecretStr

from streamflow import ConfigError, Pipeline, Settings, Worker
from streamflow.cli import main
from streamflow.connectors import SourceBatch
from streamflow.connectors.testing import MemorySink, MemorySource

from .helpers import order_pipeline, rec_id


class ThenIdle(MemorySource):
    """Publishes its batches, then keeps the worker running until it is stopped."""

    def __init__(self, batches: list[list[dict[str, object]]]) -> None:
        super().__init__(batches, record_id=rec_id)

    async def read(self) -> AsyncGenerator[SourceBatch, None]:  # type: ignore[override]
        async for batch in super().read():
            yield batch
        await asyncio.Event().wait()


def pipeline() -> Pipeline:
    good = [{"id": i, "day": f"d{i % 3}"} for i in range(9)]
    orders_src = ThenIdle([good[:5], [*good[5:], {"id": "not-a-number", "day": "d0"}]])
    # Payments only for d0 and d1: the d2 barrier of the report stays open.
    payments_src = ThenIdle([[{"id": 100, "day": "d0"}, {"id": 101, "day": "d1"}]])

    return order_pipeline("obs", orders_src, payments_src, MemorySink())


def sample(text: str, metric: str, /, **labels: str) -> float:
    """The value of one Prometheus sample whose labels include ``labels``."""
    for line in text.splitlines():
        m = re.match(r"^(\w+)(?:\{(.*)\})? (\S+)$", line)
        if m is None or m.group(1) != metric:
            continue
        got = dict(re.findall(r'(\w+)="([^"]*)"', m.group(2) or ""))
        if all(got.get(k) == v for k, v in labels.items()):
            return float(m.group(3))
    raise AssertionError(f"no sample {metric}{labels} in /metrics:\n{text}")


async def wait_for(check, timeout: float = 60.0):  # type: ignore[no-untyped-def]
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        try:
            return await check()
        except AssertionError:
            if asyncio.get_running_loop().time() > deadline:
                raise
            await asyncio.sleep(0.2)


async def test_health_metrics_and_status_match_the_work_done(
    settings: Settings, capsys: pytest.CaptureFixture[str]
) -> None:
    # Lag read on every request: this test compares it with the work done at each moment.
    worker = Worker(pipeline(), settings.model_copy(update={"status_lag_ttl_s": 0.0}))
    task = asyncio.create_task(worker.run())
    while worker.http_port is None:
        assert not task.done(), task
        await asyncio.sleep(0.01)
    base = f"http://127.0.0.1:{worker.http_port}"
    async with httpx.AsyncClient(base_url=base, timeout=10) as http:
        assert (await http.get("/healthz")).status_code == 200

        async def settled() -> str:
            ready = await http.get("/readyz")
            assert ready.status_code == 200, ready.text
            text = (await http.get("/metrics")).text
            assert sample(text, "streamflow_sink_records_total", sink="memorysink-reports") == 2
            assert sample(text, "streamflow_consumer_lag", group=f"{settings.namespace}"
                          ".stage.report") == 0
            return text

        text = await wait_for(settled)
        assert (await http.get("/metrics")).headers["content-type"].startswith("text/plain")
        # Sources: 9 valid orders and 2 payments published, the malformed order dead-lettered.
        assert sample(text, "streamflow_arrivals_out_total", asset="orders") == 9
        assert sample(text, "streamflow_arrivals_out_total", asset="payments") == 2
        assert sample(text, "streamflow_dead_letters_total", kind="source",
                      name="orders-src") == 1
        # check: 9 runs, one dead-lettered (no retries allowed), 8 outputs.
        assert sample(text, "streamflow_arrivals_in_total", asset="orders",
                      consumer="check") == 9
        assert sample(text, "streamflow_runs_total", stage="check", status="succeeded") == 8
        assert sample(text, "streamflow_runs_total", stage="check", status="dead-lettered") == 1
        assert sample(text, "streamflow_dead_letters_total", kind="stage", name="check") == 1
        assert sample(text, "streamflow_arrivals_out_total", asset="checked") == 8
        assert sample(text, "streamflow_stage_duration_seconds_count", stage="check") == 9
        assert sample(text, "streamflow_fire_latency_seconds_count", stage="check") == 9
        assert sample(text, "streamflow_stage_duration_seconds_bucket", stage="check",
                      le="+Inf") == 9
        # report: a barrier per day; d0 and d1 fire (once each), d2 waits for its payment.
        assert sample(text, "streamflow_runs_total", stage="report", status="succeeded") == 2
        assert sample(text, "streamflow_open_barriers", stage="report") == 1
        assert sample(text, "streamflow_oldest_open_barrier_age_seconds", stage="report") > 0
        assert sample(text, "streamflow_arrivals_in_total", asset="payments",
                      consumer="report") == 2

        status = (await http.get("/status")).json()
        assert status["phase"] == "running" and status["ready"] is True
        assert status["stages"]["report"]["open_barriers"] == 1
        assert status["stages"]["check"]["runs"] == {"succeeded": 8, "dead-lettered": 1}
        reasons = [f["reason"] for f in status["recent_failures"]]
        assert any("order 4 is cursed" in r for r in reasons), reasons
        assert any("not-a-number" in r or "id" in r for r in reasons), reasons
        assert (await http.get("/nope")).status_code == 404

        rc = await asyncio.to_thread(main, ["status", "--url", base])
        out = capsys.readouterr().out
        assert rc == 0
        assert re.search(r"^report\s+stage\s+0\s+1\s+\d+\.\ds\s+.*succeeded 2", out, re.M), out
        assert "order 4 is cursed" in out

        worker.request_stop()
        summary = await asyncio.wait_for(task, 120)
    assert summary.drained
    async with httpx.AsyncClient(timeout=2) as http:
        with pytest.raises(httpx.ConnectError):  # the port closes with the worker
            await http.get(f"{base}/healthz")


async def test_a_taken_http_port_is_a_clear_error(tmp_path: Path) -> None:
    with __import__("socket").socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        settings = Settings(state_dir=tmp_path / "s", namespace="obsport", http_port=port)
        with pytest.raises(ConfigError, match=rf"127\.0\.0\.1:{port}.*--http-port"):
            await Worker(pipeline(), settings).run()


def test_status_without_a_worker_says_what_to_do(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["status", "--url", "http://127.0.0.1:9"]) == 2
    err = capsys.readouterr().err
    assert "cannot reach the worker at http://127.0.0.1:9/status" in err
    assert "streamflow run" in err


def test_http_port_off_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STREAMFLOW_HTTP_PORT", "off")
    assert Settings.load().http_port is None
    monkeypatch.setenv("STREAMFLOW_HTTP_PORT", "9555")
    assert Settings.load().http_port == 9555


async def test_probes_follow_the_worker_phase_and_a_dead_consumer() -> None:
    from streamflow.observability import Metrics, Probe

    probe = Probe("p", "embedded", Metrics("p"))
    routes = probe.routes()

    async def code(route: str) -> int:
        status, _, _ = await routes[route]()
        return status

    assert (await code("/healthz"), await code("/readyz")) == (200, 503)  # starting
    probe.phase = "running"
    assert (await code("/healthz"), await code("/readyz")) == (200, 200)

    async def crash() -> None:
        raise RuntimeError("broker gone")

    task = asyncio.create_task(crash(), name="consumer:p.stage.s")
    await asyncio.gather(task, return_exceptions=True)
    probe.tasks.append(task)
    status, _, body = await routes["/healthz"]()
    assert status == 503 and b"consumer:p.stage.s" in body
    assert await code("/readyz") == 503
    probe.tasks.clear()
    probe.phase = "draining"
    assert (await code("/healthz"), await code("/readyz")) == (200, 503)
    _, _, body = await routes["/readyz"]()
    assert b"draining" in body


async def test_a_token_guards_status_and_metrics_and_lag_is_cached(
    settings: Settings, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch
) -> None:
    token = "tok-3f9a-never-shown"
    caplog.set_level(logging.DEBUG)
    settings = settings.model_copy(update={"http_token": SecretStr(token),
                                           "status_lag_ttl_s": 2.0})
    worker = Worker(pipeline(), settings)
    lag_reads = 0

    async def wait_ready() -> None:
        assert worker.probe.ready()[0]

    task = asyncio.create_task(worker.run())
    while worker.http_port is None:
        assert not task.done(), task
        await asyncio.sleep(0.01)
    base = f"http://127.0.0.1:{worker.http_port}"
    try:
        await wait_for(wait_ready)
        for c in worker.probe.consumers:  # count the broker readings behind /status
            assert c.sub is not None
            real = c.sub.lags

            async def counted(real=real):  # type: ignore[no-untyped-def]
                nonlocal lag_reads
                lag_reads += 1
                return await real()

            monkeypatch.setattr(c.sub, "lags", counted)
        async with httpx.AsyncClient(base_url=base, timeout=10) as http:
            assert (await http.get("/healthz")).json()["status"] == "ok"
            assert "ready" in (await http.get("/readyz")).json()  # open: 200 or 503, no 401
            for route in ("/status", "/metrics", "/nope"):
                for auth in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": token}):
                    r = await http.get(route, headers=auth)
                    assert r.status_code == 401, (route, auth)
                    assert r.headers["WWW-Authenticate"] == 'Bearer realm="streamflow"'
                    assert token not in r.text
            good = {"Authorization": f"Bearer {token}"}
            await asyncio.sleep(2.1)  # what start-up read has expired
            before = lag_reads
            for _ in range(5):
                assert "stages" in (await http.get("/status", headers=good)).json()
                assert (await http.get("/metrics", headers=good)).status_code == 200
            per_reading = len(worker.probe.consumers)
            assert lag_reads - before == per_reading, "one lag reading serves every request"
            await asyncio.sleep(2.1)
            assert (await http.get("/status", headers=good)).status_code == 200
            assert lag_reads - before == 2 * per_reading, "read again once stale"

            assert await asyncio.to_thread(main, ["status", "--url", base]) == 2  # an error
            monkeypatch.setenv("STREAMFLOW_HTTP_TOKEN", token)
            assert await asyncio.to_thread(main, ["status", "--url", base]) == 0
    finally:
        worker.request_stop()
        await asyncio.wait_for(task, 120)
    out = capsys.readouterr()
    assert "answered 401" in out.err
    assert "(/metrics and /status need the bearer token)" in caplog.text
    for shown in (out.out, out.err, caplog.text, repr(settings), str(settings)):
        assert token not in shown


def test_the_http_token_comes_from_the_environment_and_stays_out_of_errors(
    monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("STREAMFLOW_HTTP_TOKEN", "env-token-xyz")
    s = Settings.load()
    assert s.http_token is not None and s.http_token.get_secret_value() == "env-token-xyz"
    assert "env-token-xyz" not in repr(s)
    monkeypatch.setenv("STREAMFLOW_DEDUPE_WINDOW_S", str(30 * 86_400))  # an invalid pair
    with pytest.raises(ConfigError) as e:
        Settings.load()
    assert "ledger_retention_s" in str(e.value) and "env-token-xyz" not in str(e.value)
