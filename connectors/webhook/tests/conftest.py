"""What the webhook tests share: a source served on loopback with an engine stand-in that
acknowledges its batches, Standard Webhooks signing as a sender does it, and a throwaway
self-signed certificate (made at test time; no key is ever committed)."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import shutil
import subprocess
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from streamflow_connector_webhook import WebhookSource

from streamflow.connectors import ConnectorContext, build_source

SECRET = "whsec_" + base64.b64encode(b"0123456789abcdef0123456789abcdef").decode()

Served = tuple[WebhookSource, httpx.AsyncClient]


@asynccontextmanager
async def _serving(tmp_path: Path, ack: bool = True, client: dict[str, Any] | None = None,
                   ctx: ConnectorContext | None = None, **config: object
                   ) -> AsyncIterator[Served]:
    src = build_source("webhook", config)
    assert isinstance(src, WebhookSource)
    await src.setup(ctx or ConnectorContext("hook", "events", str(tmp_path)))
    seen: list[str] = []

    async def engine() -> None:
        async for batch in src.read():
            seen.extend(r.record_id for r in batch.records)
            await src.ack(batch)

    task = asyncio.create_task(engine()) if ack else None
    scheme = "https" if config.get("tls_cert") else "http"
    try:
        async with httpx.AsyncClient(base_url=f"{scheme}://127.0.0.1:{src.port}", timeout=30,
                                     **(client or {})) as c:
            c.seen = seen  # type: ignore[attr-defined]
            yield src, c
    finally:
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        await src.stop()


@pytest.fixture
def serving(tmp_path: Path) -> Callable[..., AbstractAsyncContextManager[Served]]:
    """``async with serving(**config) as (source, client)``: a set-up webhook source whose
    batches are acknowledged as the engine would (``ack=False``: never)."""
    return lambda **kw: _serving(tmp_path, **kw)


def _sign(body: bytes, msg_id: str, secret: str = SECRET, ts: int | None = None,
          extra: str = "") -> dict[str, str]:
    ts = int(time.time()) if ts is None else ts
    key = base64.b64decode(secret.removeprefix("whsec_"))
    mac = hmac.new(key, f"{msg_id}.{ts}.".encode() + body, hashlib.sha256).digest()
    sig = f"{extra} v1,{base64.b64encode(mac).decode()}".strip()
    return {"webhook-id": msg_id, "webhook-timestamp": str(ts), "webhook-signature": sig,
            "Content-Type": "application/json"}


@pytest.fixture
def secret() -> str:
    """The signing secret ``sign`` signs with by default, as a sender issues it."""
    return SECRET


@pytest.fixture
def sign() -> Callable[..., dict[str, str]]:
    """``sign(body, msg_id, secret=SECRET, ts=None, extra="")``: Standard Webhooks headers as
    a sender makes them (``extra``: other signatures before ours, as during a key rotation)."""
    return _sign


@pytest.fixture
def tls_files(tmp_path: Path) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 and its key, made now, in ``tmp_path``."""
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.fail("the TLS tests need the openssl command")
    subprocess.run(
        [openssl, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
         "-nodes", "-keyout", str(key), "-out", str(cert), "-days", "1",
         "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"],
        check=True, capture_output=True, timeout=60)
    return cert, key
