"""The connector kit (``streamflow.connectors.testing``) on the webhook source and sink.

The contract every connector meets: lifecycle, deterministic ids on re-read, checkpoint and
resume, idempotent redelivery, and a clear error from a misconfigured sink."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from pathlib import Path
from typing import Any

from streamflow.connectors import build_sink, build_source
from streamflow.connectors.testing import check_sink, check_source


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_kit_webhook_source(tmp_path: Path) -> None:
    """Clients retry until 202 (the webhook's durability contract): that is the 'seed'."""
    import aiohttp

    port = _free_port()
    url = f"http://127.0.0.1:{port}/in"
    clients: list[asyncio.Task[None]] = []

    async def post_until_accepted(session: aiohttp.ClientSession, i: int) -> None:
        while True:
            with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                async with session.post(url, json={"id": i},
                                        headers={"Idempotency-Key": f"req-{i}"}) as r:
                    if r.status == 202:
                        return
            await asyncio.sleep(0.1)

    session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30))

    def seed() -> None:
        clients.extend(asyncio.create_task(post_until_accepted(session, i)) for i in range(5))

    try:
        report = await check_source(
            lambda: build_source("webhook", {"port": port, "path": "/in"}),
            expected_count=5, state_dir=tmp_path / "state", seed=seed, finite=False)
        await asyncio.wait_for(asyncio.gather(*clients), 30)  # every request was accepted
    finally:
        for c in clients:
            c.cancel()
        await session.close()
    assert sorted(report.record_ids) == [f"key:req-{i}:0" for i in range(5)]


@contextlib.asynccontextmanager
async def _receiver() -> Any:
    """An HTTP endpoint that stores enveloped records by key, like a real idempotent API."""
    from aiohttp import web

    rows: dict[str, Any] = {}

    async def handle(request: web.Request) -> web.Response:
        for item in await request.json():
            rows[item["key"] or item["arrival_id"]] = item
        return web.json_response({"ok": True})

    app = web.Application()
    app.router.add_post("/hook", handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield f"http://127.0.0.1:{port}/hook", rows
    finally:
        await runner.cleanup()


async def test_kit_webhook_sink(tmp_path: Path) -> None:
    async with _receiver() as (url, rows):
        await check_sink(
            lambda: build_sink("webhook", {"url": url, "envelope": True, "batch_size": 4}),
            read_back=lambda: list(rows.values()), state_dir=tmp_path / "state",
            bad_factory=lambda: build_sink("webhook", {
                "url": f"http://127.0.0.1:{_free_port()}/hook", "max_retries": 1,
                "retry_backoff_s": 0, "timeout_s": 2}))
