"""The webhook source: an HTTP endpoint that answers 202 only once the posted records are
published, so a client that got anything else retries with the same Idempotency-Key."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import re
import uuid
from collections.abc import AsyncGenerator
from typing import TYPE_CHECKING, Any

import orjson
from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator

from streamflow.connectors import (
    ConnectorContext,
    ConnectorError,
    Reject,
    SourceBatch,
    SourceRecord,
    duplicate_name,
    first_duplicate,
    parse_marked,
)

from ._aiohttp import aiohttp_module

if TYPE_CHECKING:  # annotations only: aiohttp is the optional `webhook` extra
    from aiohttp import web

log = logging.getLogger("streamflow.connectors.webhook")
TRACEPARENT = re.compile(r"^[0-9a-f]{2}-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$")
MAX_KEY_LEN = 255


class WebhookSourceConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    host: str = Field(
        default="127.0.0.1", description="interface to listen on (0.0.0.0: every one)")
    port: int = Field(
        default=0, ge=0, le=65535, description="0 picks a free port (see `location`)")
    path: str = Field(default="/", description="URL path that accepts POSTs")
    token: SecretStr | None = Field(
        default=None, description="require `Authorization: Bearer <token>`")
    hmac_secret: SecretStr | None = Field(
        default=None,
        description="require `X-Signature: sha256=<hex HMAC-SHA256 of the raw body>`")
    max_body_bytes: int = Field(default=1 << 20, gt=0, description="larger bodies get 413")
    ack_timeout_s: float = Field(
        default=30.0, gt=0,
        description="answer 503 if the records are not published within this")
    max_pending: int = Field(
        default=64, ge=1,
        description="requests queued for publishing; more wait (backpressure)")
    allow_duplicate_keys: bool = Field(
        default=False, description="accept an object with a name twice (the last one wins) "
        "instead of dead-lettering it")

    @field_validator("path")
    @classmethod
    def _absolute(cls, v: str) -> str:
        if not v.startswith("/"):
            raise ValueError(f"path {v!r} must start with '/'")
        return v


class _Stopping(Exception):
    pass


class _BadRequest(Exception):
    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status, self.reason = status, reason


class WebhookSource:
    """Listens for POSTs of a JSON object or array of objects; one request is one batch."""

    def __init__(self, config: WebhookSourceConfig) -> None:
        self.cfg = config
        self.port = config.port
        self.location = f"http://{config.host}:{config.port}{config.path}"
        self._runner: web.AppRunner | None = None
        self._queue: asyncio.Queue[SourceBatch | None] = asyncio.Queue(config.max_pending)
        self._pending: dict[str, asyncio.Future[None]] = {}
        self._stopping = False

    async def setup(self, ctx: ConnectorContext) -> None:
        aiohttp = aiohttp_module()
        web = aiohttp.web
        self._stopping = False  # the same object may serve a later run
        self._queue = asyncio.Queue(self.cfg.max_pending)
        app = web.Application(client_max_size=self.cfg.max_body_bytes)
        app.router.add_post(self.cfg.path, self._handle)
        # handler_cancellation: a client that hangs up withdraws its request (not yet read).
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=5.0,
                               handler_cancellation=True)
        await runner.setup()
        try:
            await web.TCPSite(runner, self.cfg.host, self.cfg.port).start()
        except OSError as e:
            await runner.cleanup()
            raise ConnectorError(
                f"webhook source {ctx.name!r}: cannot listen on {self.cfg.host}:{self.cfg.port}:"
                f" {e}") from e
        self._runner = runner
        self.port = int(runner.addresses[0][1])
        self.location = f"http://{self.cfg.host}:{self.port}{self.cfg.path}"
        log.info("webhook source %s listening on %s", ctx.name, self.location)

    @property
    def waiting(self) -> int:
        """Requests waiting for their records to be published."""
        return len(self._pending)

    async def read(self) -> AsyncGenerator[SourceBatch, None]:
        while True:
            batch = await self._queue.get()
            if batch is None:
                return
            fut = self._pending.get(batch.position)
            if fut is None or fut.done():  # the client gave up (timeout or disconnect)
                continue
            yield batch

    async def ack(self, batch: SourceBatch) -> None:
        fut = self._pending.get(batch.position)
        if fut is not None and not fut.done():
            fut.set_result(None)

    async def stop(self) -> None:
        """Answer every waiting request 503 (retry later), then close the listener."""
        self._stopping = True
        for fut in self._pending.values():
            if not fut.done():
                fut.set_exception(_Stopping())
        while not self._queue.empty():
            self._queue.get_nowait()
        self._queue.put_nowait(None)
        if self._runner is not None:
            runner, self._runner = self._runner, None
            await runner.cleanup()

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        from aiohttp import web  # deferred optional dependency, imported by setup() already
        try:
            if self._stopping:
                raise _BadRequest(503, "the worker is shutting down; retry later")
            self._authorize_token(request)
            body = await self._read_body(request)
            self._authorize_hmac(request, body)
            items = _parse(body)
            batch = self._batch(request, body, items)
        except _BadRequest as e:
            headers = {"WWW-Authenticate": "Bearer"} if e.status == 401 else None
            return web.json_response({"error": e.reason}, status=e.status, headers=headers)
        if not batch.records and not batch.rejects:
            return web.json_response({"accepted": 0}, status=202)
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pending[batch.position] = fut
        try:
            await asyncio.wait_for(self._publish(batch, fut), self.cfg.ack_timeout_s)
        except TimeoutError:
            return web.json_response({"error": f"not published within {self.cfg.ack_timeout_s}s;"
                                      " retry with the same Idempotency-Key"}, status=503)
        except _Stopping:
            return web.json_response(
                {"error": "the worker is shutting down; retry later"}, status=503)
        finally:
            self._pending.pop(batch.position, None)
        return web.json_response(
            {"accepted": len(batch.records) + len(batch.rejects) - batch.dead_lettered,
             "dead_lettered": batch.dead_lettered,
             "request": (batch.records or batch.rejects)[0].origin["request"]},
            status=202)

    async def _publish(self, batch: SourceBatch, fut: asyncio.Future[None]) -> None:
        await self._queue.put(batch)
        await fut

    def _authorize_token(self, request: web.Request) -> None:
        if self.cfg.token is None:
            return
        got = request.headers.get("Authorization", "")
        want = f"Bearer {self.cfg.token.get_secret_value()}"
        if not got:
            raise _BadRequest(401, "missing Authorization: Bearer <token>")
        if not hmac.compare_digest(got.encode(), want.encode()):
            raise _BadRequest(401, "invalid bearer token")

    def _authorize_hmac(self, request: web.Request, body: bytes) -> None:
        if self.cfg.hmac_secret is None:
            return
        got = request.headers.get("X-Signature", "")
        if not got:
            raise _BadRequest(401, "missing X-Signature: sha256=<hex HMAC-SHA256 of the body>")
        secret = self.cfg.hmac_secret.get_secret_value().encode()
        want = "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()
        if not hmac.compare_digest(got.strip().lower().encode(), want.encode()):
            raise _BadRequest(401, "X-Signature does not match the body")

    async def _read_body(self, request: web.Request) -> bytes:
        from aiohttp import ClientError  # deferred optional dependency, as above

        limit = self.cfg.max_body_bytes
        too_big = f"request body exceeds max_body_bytes={limit}"
        if request.content_length is not None and request.content_length > limit:
            raise _BadRequest(413, too_big)
        body = bytearray()
        try:
            async for chunk in request.content.iter_chunked(1 << 16):
                body += chunk
                if len(body) > limit:
                    raise _BadRequest(413, too_big)
        except (ConnectionError, ClientError) as e:  # the client went away
            raise _BadRequest(400, f"could not read the request body: {e}") from e
        return bytes(body)

    def _batch(self, request: web.Request, body: bytes,
               items: list[dict[str, Any]]) -> SourceBatch:
        key = request.headers.get("Idempotency-Key")
        if key is not None:
            key = key.strip()
            if not key or len(key) > MAX_KEY_LEN:
                raise _BadRequest(400, f"Idempotency-Key must be 1-{MAX_KEY_LEN} characters")
            req = f"key:{key}"
        else:
            req = "body:" + hashlib.sha256(body).hexdigest()[:32]
        tp = request.headers.get("traceparent", "").strip().lower()
        traceparent = tp.encode() if TRACEPARENT.match(tp) else None
        dups = [None] * len(items) if self.cfg.allow_duplicate_keys else _duplicates(body, items)
        batch = SourceBatch([], position=uuid.uuid4().hex)
        for i, item in enumerate(items):
            origin = {"webhook": self.cfg.path, "request": req, "index": i}
            if dups[i] is None:
                batch.records.append(SourceRecord(item, origin, f"{req}:{i}", traceparent))
            else:
                batch.rejects.append(Reject(origin, (
                    f"request {req} item {i}: the name {dups[i]!r} appears twice in one JSON "
                    "object (set allow_duplicate_keys to accept such records, the last one "
                    "winning)"), _text(item, body)))
        return batch


def _parse(body: bytes) -> list[dict[str, Any]]:
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError as e:
        raise _BadRequest(400, f"body is not valid JSON: {e}") from None
    if isinstance(data, dict):
        return [data]
    if not isinstance(data, list):
        raise _BadRequest(
            400, f"expected a JSON object or an array of objects, got {type(data).__name__}")
    for i, item in enumerate(data):
        if not isinstance(item, dict):
            raise _BadRequest(400, f"array item {i} is not a JSON object (got {_json_type(item)})")
    return data


def _duplicates(body: bytes, items: list[dict[str, Any]]) -> list[str | None]:
    """Per item, a name it gives twice, if any (most bodies have none: one cheap check)."""
    if duplicate_name(body, items if body.lstrip()[:1] == b"[" else items[0]) is None:
        return [None] * len(items)
    marked = parse_marked(body)
    if not isinstance(marked, list):
        marked = [marked]
    return [first_duplicate(m) for m in marked] + [None] * (len(items) - len(marked))


def _text(item: dict[str, Any], body: bytes) -> str:
    """An item's JSON text; the whole body if it is nested too deep for orjson to write."""
    try:
        return orjson.dumps(item).decode()
    except orjson.JSONEncodeError:
        return body.decode("utf-8", "replace")


def _json_type(v: object) -> str:
    return {str: "string", int: "number", float: "number", bool: "boolean", list: "array",
            type(None): "null"}.get(type(v), type(v).__name__)
