"""The webhook sink: batches POSTed as JSON arrays with an Idempotency-Key, retried with
backoff by the SDK's ``post_with_retries``."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from typing import TYPE_CHECKING

import orjson
from pydantic import BaseModel, ConfigDict, Field, field_validator

from streamflow.connectors import (
    ConnectorContext,
    Retries,
    SinkRecord,
    post_with_retries,
    redact,
)

from ._aiohttp import aiohttp_module

if TYPE_CHECKING:  # annotations only: aiohttp is the optional `webhook` extra
    from aiohttp import ClientSession


class WebhookSinkConfig(BaseModel):
    # Inputs stay out of validation errors: headers may carry credentials.
    model_config = ConfigDict(extra="forbid", hide_input_in_errors=True)

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
        aiohttp = aiohttp_module()
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
