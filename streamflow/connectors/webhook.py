"""The ``webhook`` connector: an HTTP endpoint source and an HTTP POST sink (aiohttp).

Source: a request is answered 202 only once its records are durable on the transport (the
engine calls ``ack`` after publishing), so a client that got 202 may forget the data and a
client that got anything else should retry. Record ids derive from the ``Idempotency-Key``
header (else from the body's hash), so a retried request produces the same arrival ids and
dedupes downstream.

Sink: each chunk of ``batch_size`` records is POSTed as a JSON array with an
``Idempotency-Key`` derived from the chunk's arrival ids, retried with backoff on 5xx, 408, 429
and connection errors; when it gives up it raises and the engine dead-letters the batch.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import random
import re
import uuid
from collections.abc import AsyncGenerator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import orjson
from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator

from ._api import ConnectorContext, ConnectorSpec, SinkRecord, SourceBatch, SourceRecord
from ._registry import ConnectorError

if TYPE_CHECKING:
    from aiohttp import ClientSession, web

log = logging.getLogger("streamflow.connectors.webhook")
TRACEPARENT = re.compile(r"^[0-9a-f]{2}-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$")
MAX_KEY_LEN = 255


def _aiohttp() -> Any:
    try:
        import aiohttp
        import aiohttp.web
    except ImportError as e:
        raise ConnectorError(
            "the webhook connector needs aiohttp: pip install 'streamflow[webhook]'") from e
    return aiohttp


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
        aiohttp = _aiohttp()
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
        from aiohttp import web  # already imported by setup()
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
        if not batch.records:
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
            {"accepted": len(batch.records) - batch.dead_lettered,
             "dead_lettered": batch.dead_lettered,
             "request": batch.records[0].origin["request"]},
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
        from aiohttp import ClientError

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
        records = [
            SourceRecord(item, {"webhook": self.cfg.path, "request": req, "index": i},
                         f"{req}:{i}", traceparent)
            for i, item in enumerate(items)
        ]
        return SourceBatch(records, position=uuid.uuid4().hex)


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


def _json_type(v: object) -> str:
    return {str: "string", int: "number", float: "number", bool: "boolean", list: "array",
            type(None): "null"}.get(type(v), type(v).__name__)


class WebhookSinkConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    url: str = Field(description="endpoint each batch is POSTed to")
    batch_size: int = Field(default=100, ge=1, description="records per POST")
    headers: dict[str, str] = Field(default_factory=dict, description="extra request headers")
    timeout_s: float = Field(default=10.0, gt=0, description="per attempt")
    max_retries: int = Field(default=5, ge=0, description="retries after the first attempt")
    retry_backoff_s: float = Field(
        default=0.5, ge=0, description="first retry delay; doubles each retry, with jitter")
    max_backoff_s: float = Field(default=30.0, ge=0, description="cap on one retry delay")
    envelope: bool = Field(
        default=False,
        description="POST {key, arrival_id, partition, value} objects instead of values")

    @field_validator("url")
    @classmethod
    def _http(cls, v: str) -> str:
        if not re.match(r"^https?://[^/\s]+", v):
            raise ValueError(f"url {v!r} must be an http:// or https:// URL")
        return v


class WebhookDeliveryError(RuntimeError):
    """The endpoint refused a batch, or kept failing until the retries ran out."""


def idempotency_key(records: Sequence[SinkRecord]) -> str:
    """The same records (in any order) always give the same key."""
    h = hashlib.blake2b(digest_size=16)
    for aid in sorted(r.arrival_id for r in records):
        h.update(aid.encode() + b"\n")
    return f"sf-{h.hexdigest()}"


class WebhookSink:
    """POSTs batches as JSON arrays; at most ``batch_size`` records are buffered."""

    def __init__(self, config: WebhookSinkConfig) -> None:
        self.cfg = config
        self.location = redact(config.url)
        self._session: ClientSession | None = None
        self._buf: list[SinkRecord] = []

    async def setup(self, ctx: ConnectorContext) -> None:
        aiohttp = _aiohttp()
        self._session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=self.cfg.timeout_s), headers=self.cfg.headers)

    async def write(self, records: Sequence[SinkRecord]) -> None:
        self._buf.extend(records)
        await self._drain(full_only=True)

    async def flush(self) -> None:
        await self._drain(full_only=False)

    async def stop(self) -> None:
        try:
            await self.flush()
        finally:
            if self._session is not None:
                await self._session.close()
                self._session = None

    async def _drain(self, full_only: bool) -> None:
        size = self.cfg.batch_size
        try:
            while self._buf and (len(self._buf) >= size or not full_only):
                await self._post(self._buf[:size])
                del self._buf[:size]
        except BaseException:
            self._buf.clear()  # the engine dead-letters the whole batch; never resend it later
            raise

    async def _post(self, chunk: list[SinkRecord]) -> None:
        if self._session is None:
            raise RuntimeError("webhook sink: setup() was not called")
        key = idempotency_key(chunk)
        values = [{"key": r.key, "arrival_id": r.arrival_id, "partition": r.partition,
                   "value": r.value} if self.cfg.envelope else r.value for r in chunk]
        cfg = self.cfg
        await post_with_retries(
            self._session, cfg.url, orjson.dumps(values), key,
            f"POST {self.location} ({len(chunk)} records, Idempotency-Key {key})",
            Retries(cfg.max_retries, cfg.retry_backoff_s, cfg.max_backoff_s),
            WebhookDeliveryError)


@dataclass(frozen=True, slots=True)
class Retries:
    max_retries: int
    backoff_s: float
    max_backoff_s: float

    def delay(self, attempt: int, retry_after: float | None) -> float:
        if retry_after is not None:
            return min(retry_after, self.max_backoff_s)
        delay = min(self.backoff_s * 2.0**attempt, self.max_backoff_s)
        return delay * random.uniform(0.5, 1.0)  # jitter: clients that failed together spread


async def post_with_retries(session: ClientSession, url: str, body: bytes, key: str, what: str,
                            retries: Retries, error: type[Exception],
                            logger: logging.Logger = log, retry_level: int = logging.WARNING,
                            ) -> None:
    """POST JSON with an ``Idempotency-Key``; retry 5xx, 408, 429, connection errors and
    timeouts with backoff (honouring ``Retry-After``); raise ``error`` when refused or out of
    attempts. Shared by the webhook sink and webhook alerts."""
    import aiohttp  # imported by whoever built the session

    headers = {"Content-Type": "application/json", "Idempotency-Key": key}
    last = ""
    for attempt in range(retries.max_retries + 1):
        retry_after: float | None = None
        try:
            async with session.post(url, data=body, headers=headers,
                                    allow_redirects=False) as resp:
                if 200 <= resp.status < 300:
                    return
                text = (await resp.text(errors="replace"))[:300]
                last = f"HTTP {resp.status} {resp.reason or ''}".rstrip() + f": {text}"
                if not (resp.status >= 500 or resp.status in (408, 429)):
                    raise error(f"{what} was refused with {last} (not retried: a "
                                f"{resp.status} means the request itself is wrong)")
                retry_after = _seconds(resp.headers.get("Retry-After"))
        except (aiohttp.ClientError, TimeoutError) as e:
            last = f"{type(e).__name__}: {e}"
        if attempt < retries.max_retries:
            logger.log(retry_level, "%s failed (attempt %d): %s; retrying", what, attempt + 1,
                       last)
            await asyncio.sleep(retries.delay(attempt, retry_after))
    raise error(f"{what} failed after {retries.max_retries + 1} attempts; last error: {last}")


def redact(url: str) -> str:
    """A URL fit for logs and errors: credentials never shown."""
    return re.sub(r"//[^/@]*@", "//***@", url)


def _seconds(raw: str | None) -> float | None:
    try:
        return max(0.0, float(raw)) if raw is not None else None
    except ValueError:
        return None  # an HTTP date: fall back to our own backoff


WEBHOOK = ConnectorSpec(
    name="webhook",
    source=WebhookSource,
    sink=WebhookSink,
    source_config=WebhookSourceConfig,
    sink_config=WebhookSinkConfig,
    extra="webhook",
)
