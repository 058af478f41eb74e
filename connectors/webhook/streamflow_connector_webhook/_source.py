"""The webhook source: an HTTP(S) endpoint that answers 202 only once the posted records are
published, so a client that got anything else retries with the same webhook-id."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import re
import ssl
import uuid
from collections.abc import AsyncGenerator
from typing import TYPE_CHECKING, Any

import orjson

from streamflow.connectors import (
    ClaimTable,
    ConnectorContext,
    ConnectorError,
    LocalClaims,
    Reject,
    SourceBatch,
    SourceRecord,
    duplicate_name,
    first_duplicate,
    parse_marked,
)

from ._aiohttp import aiohttp_module
from ._config import WebhookSourceConfig, is_loopback
from ._guard import (
    RateLimit,
    Refused,
    check_content_type,
    check_signature,
    check_token,
    fingerprint,
    signing_key,
)

if TYPE_CHECKING:  # annotations only: aiohttp is the optional `webhook` extra
    from aiohttp import web

log = logging.getLogger("streamflow.connectors.webhook")
TRACEPARENT = re.compile(r"^[0-9a-f]{2}-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$")
MAX_KEY_LEN = 255
RETRY_SOON = {"Retry-After": "1"}


class _Stopping(Exception):
    pass


class WebhookSource:
    """Listens for POSTs of a JSON object or array of objects; one request is one batch."""

    def __init__(self, config: WebhookSourceConfig) -> None:
        self.cfg = config
        self.port = config.port
        self.location = f"{config.scheme}://{config.host}:{config.port}{config.path}"
        self._runner: web.AppRunner | None = None
        self._queue: asyncio.Queue[SourceBatch | None] = asyncio.Queue(config.max_pending)
        self._pending: dict[str, asyncio.Future[None]] = {}
        self._stopping = False
        self._active = 0
        self._limit = (RateLimit(config.rate_limit_per_s, config.rate_burst)
                       if config.rate_limit_per_s is not None else None)
        self._key: bytes | None = None
        self._credential = "none"
        self._claims: ClaimTable | None = None

    async def setup(self, ctx: ConnectorContext) -> None:
        web = aiohttp_module().web
        cfg = self.cfg
        self._stopping = False  # the same object may serve a later run
        self._queue = asyncio.Queue(cfg.max_pending)
        self._credentials()
        claims = ctx.claims if ctx.claims is not None else LocalClaims()
        self._claims = await claims.table(ctx.name, cfg.idempotency_retention_s)
        tls = self._tls(ctx.name) if cfg.tls_cert is not None else None
        app = web.Application(client_max_size=cfg.max_body_bytes)
        app.router.add_post(cfg.path, self._handle)
        # handler_cancellation: a client that hangs up withdraws its request (not yet read).
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=5.0,
                               handler_cancellation=True)
        await runner.setup()
        try:
            await web.TCPSite(runner, cfg.host, cfg.port, ssl_context=tls).start()
        except OSError as e:
            await runner.cleanup()
            raise ConnectorError(
                f"webhook source {ctx.name!r}: cannot listen on {cfg.host}:{cfg.port}: {e}"
            ) from e
        self._runner = runner
        self.port = int(runner.addresses[0][1])
        self.location = f"{cfg.scheme}://{cfg.host}:{self.port}{cfg.path}"
        log.info("webhook source %s listening on %s (%s)", ctx.name, self.location,
                 self._describe_auth())
        if cfg.token is not None and tls is None and not is_loopback(cfg.host):
            log.warning("webhook source %s: the bearer token crosses the network in clear "
                        "text; set tls_cert and tls_key", ctx.name)

    def _credentials(self) -> None:
        cfg = self.cfg
        self._key = signing_key(cfg.signing_secret) if cfg.signing_secret is not None else None
        if self._key is not None:
            self._credential = fingerprint("signature", self._key)
        elif cfg.token is not None:
            self._credential = fingerprint("token", cfg.token.get_secret_value().encode())

    def _describe_auth(self) -> str:
        parts = [p for p, on in (("Standard Webhooks signatures", self._key is not None),
                                 ("bearer token", self.cfg.token is not None)) if on]
        return " and ".join(parts) + " required" if parts else "no authentication"

    def _tls(self, name: str) -> ssl.SSLContext:
        cert, key = self.cfg.tls_cert, self.cfg.tls_key
        tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        tls.minimum_version = ssl.TLSVersion.TLSv1_2
        try:
            tls.load_cert_chain(str(cert), str(key))
        except (OSError, ssl.SSLError) as e:
            raise ConnectorError(f"webhook source {name!r}: cannot load tls_cert {cert} with "
                                 f"tls_key {key}: {e}") from e
        return tls

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

        if self._active >= self.cfg.max_concurrent:
            return _refusal(Refused(503, f"{self.cfg.max_concurrent} requests are in progress "
                                         "(max_concurrent); retry shortly", RETRY_SOON))
        self._active += 1
        try:
            batch = await self._admit(request)
            if not batch.records and not batch.rejects:
                return web.json_response({"accepted": 0}, status=202)
            await self._deliver(batch)
        except Refused as e:
            return _refusal(e)
        finally:
            self._active -= 1
        return web.json_response(
            {"accepted": len(batch.records) + len(batch.rejects) - batch.dead_lettered,
             "dead_lettered": batch.dead_lettered,
             "request": (batch.records or batch.rejects)[0].origin["request"]},
            status=202)

    async def _admit(self, request: web.Request) -> SourceBatch:
        """Everything a request must pass before its records are handed to the engine."""
        cfg = self.cfg
        if self._stopping:
            raise Refused(503, "the worker is shutting down; retry later", RETRY_SOON)
        if self._limit is not None:
            self._limit.take(request.remote or "unknown")
        if cfg.token is not None:
            check_token(request.headers, cfg.token)
        check_content_type(request.headers.get("Content-Type", ""))
        body = await self._read_body(request)
        signed = (check_signature(request.headers, body, self._key, cfg.signature_tolerance_s)
                  if self._key is not None else None)
        items = _parse(body)
        key = self._idempotency_key(request, signed)
        if key is not None:
            await self._claim(key, body)
        return self._batch(request, body, items, key)

    async def _deliver(self, batch: SourceBatch) -> None:
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pending[batch.position] = fut
        try:
            await asyncio.wait_for(self._publish(batch, fut), self.cfg.ack_timeout_s)
        except TimeoutError:
            raise Refused(503, f"not published within {self.cfg.ack_timeout_s}s; retry with "
                               "the same webhook-id", RETRY_SOON) from None
        except _Stopping:
            raise Refused(503, "the worker is shutting down; retry later", RETRY_SOON) from None
        finally:
            self._pending.pop(batch.position, None)

    async def _publish(self, batch: SourceBatch, fut: asyncio.Future[None]) -> None:
        await self._queue.put(batch)
        await fut

    def _idempotency_key(self, request: web.Request, signed: str | None) -> str | None:
        """The signed webhook-id; unsigned: webhook-id, else the deprecated Idempotency-Key."""
        key = signed
        if key is None:
            key = request.headers.get("webhook-id") or request.headers.get("Idempotency-Key")
        if key is None:
            return None
        key = key.strip()
        if not key or len(key) > MAX_KEY_LEN:
            raise Refused(400, f"webhook-id must be 1-{MAX_KEY_LEN} characters")
        return key

    async def _claim(self, key: str, body: bytes) -> None:
        """Bind the key to this body for every worker; a reuse with another body is refused."""
        assert self._claims is not None, "setup() binds the claims table"
        digest = hashlib.sha256(body).hexdigest()
        try:
            held = await self._claims.claim(key, f"{digest} {self._credential}")
        except Exception as e:  # the log is unreachable: the client retries later
            log.warning("webhook: cannot record idempotency key: %s: %s", type(e).__name__, e)
            raise Refused(503, "cannot record the webhook-id now; retry later",
                          RETRY_SOON) from e
        if held.split(" ", 1)[0] != digest:
            hours = self.cfg.idempotency_retention_s / 3600
            raise Refused(422, f"webhook-id {key!r} was used with a different body within "
                               f"the last {hours:g}h; new content needs a new webhook-id")

    async def _read_body(self, request: web.Request) -> bytes:
        from aiohttp import ClientError  # deferred optional dependency, as above

        limit = self.cfg.max_body_bytes
        too_big = f"request body exceeds max_body_bytes={limit}"
        if request.content_length is not None and request.content_length > limit:
            raise Refused(413, too_big)
        body = bytearray()
        try:
            async for chunk in request.content.iter_chunked(1 << 16):
                body += chunk
                if len(body) > limit:
                    raise Refused(413, too_big)
        except (ConnectionError, ClientError) as e:  # the client went away
            raise Refused(400, f"could not read the request body: {e}") from e
        return bytes(body)

    def _batch(self, request: web.Request, body: bytes, items: list[dict[str, Any]],
               key: str | None) -> SourceBatch:
        req = f"key:{key}" if key is not None else (
            "body:" + hashlib.sha256(body).hexdigest()[:32])
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


def _refusal(e: Refused) -> web.Response:
    from aiohttp import web  # deferred optional dependency, imported by setup() already

    return web.json_response({"error": e.reason}, status=e.status, headers=e.headers or None)


def _parse(body: bytes) -> list[dict[str, Any]]:
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError as e:
        raise Refused(400, f"body is not valid JSON: {e}") from None
    if isinstance(data, dict):
        return [data]
    if not isinstance(data, list):
        raise Refused(
            400, f"expected a JSON object or an array of objects, got {type(data).__name__}")
    for i, item in enumerate(data):
        if not isinstance(item, dict):
            raise Refused(400, f"array item {i} is not a JSON object (got {_json_type(item)})")
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
