"""The webhook source's settings, checked before anything listens."""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

from ._guard import signing_key

REMOVED = {
    "hmac_secret": "hmac_secret (an X-Signature over the body alone, open to replays) was "
                   "removed: set signing_secret and sign requests per Standard Webhooks "
                   "(webhook-id, webhook-timestamp, webhook-signature)",
}


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a name other than localhost may resolve to anything


class WebhookSourceConfig(BaseModel):
    # Inputs stay out of validation errors: they may hold the token or the signing secret.
    model_config = ConfigDict(extra="forbid", hide_input_in_errors=True)

    host: str = Field(
        default="127.0.0.1", description="interface to listen on (0.0.0.0: every one)")
    port: int = Field(
        default=0, ge=0, le=65535, description="0 picks a free port (see `location`)")
    path: str = Field(default="/", description="URL path that accepts POSTs")
    signing_secret: SecretStr | None = Field(
        default=None,
        description="require Standard Webhooks signatures (webhook-id, webhook-timestamp, "
                    "webhook-signature) with this secret: whsec_<base64>, or the base64 alone")
    signature_tolerance_s: float = Field(
        default=300.0, gt=0, description="how far webhook-timestamp may be from our clock")
    token: SecretStr | None = Field(
        default=None, description="require `Authorization: Bearer <token>`")
    allow_unauthenticated: bool = Field(
        default=False,
        description="listen beyond loopback without signing_secret or token (anyone who can "
                    "reach the port may post)")
    tls_cert: Path | None = Field(default=None, description="PEM certificate chain: serve HTTPS")
    tls_key: Path | None = Field(default=None, description="PEM private key of tls_cert")
    max_body_bytes: int = Field(default=1 << 20, gt=0, description="larger bodies get 413")
    ack_timeout_s: float = Field(
        default=30.0, gt=0,
        description="answer 503 if the records are not published within this")
    max_pending: int = Field(
        default=64, ge=1,
        description="requests queued for publishing; more wait (backpressure)")
    max_concurrent: int = Field(
        default=128, ge=1, description="requests handled at once; more get 503 and Retry-After")
    rate_limit_per_s: float | None = Field(
        default=50.0, gt=0,
        description="requests per second per client address (None: no limit); more get 429")
    rate_burst: int = Field(
        default=100, ge=1, description="requests a client may send at once before the limit")
    allow_duplicate_keys: bool = Field(
        default=False, description="accept an object with a name twice (the last one wins) "
        "instead of dead-lettering it")
    idempotency_retention_s: float = Field(
        default=86_400.0, gt=0,
        description="how long a webhook-id stays bound to its body (a reuse with another body "
                    "gets 422), on a compacted topic every worker reads")

    @model_validator(mode="before")
    @classmethod
    def _removed(cls, data: Any) -> Any:
        if isinstance(data, dict):
            for name, why in REMOVED.items():
                if name in data:
                    raise ValueError(why)
        return data

    @field_validator("signing_secret")
    @classmethod
    def _decodes(cls, v: SecretStr | None) -> SecretStr | None:
        if v is not None:
            signing_key(v)
        return v

    @field_validator("path")
    @classmethod
    def _absolute(cls, v: str) -> str:
        if not v.startswith("/"):
            raise ValueError(f"path {v!r} must start with '/'")
        return v

    @model_validator(mode="after")
    def _safe(self) -> WebhookSourceConfig:
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("tls_cert and tls_key go together: set both to serve HTTPS, or "
                             "neither")
        if (not is_loopback(self.host) and self.signing_secret is None and self.token is None
                and not self.allow_unauthenticated):
            raise ValueError(
                f"host {self.host!r} is reachable beyond loopback, so requests must be "
                "authenticated: set signing_secret (Standard Webhooks) or token, or set "
                "allow_unauthenticated: true to accept posts from anyone who can reach it")
        return self

    @property
    def scheme(self) -> str:
        return "https" if self.tls_cert is not None else "http"
