"""What a request must pass before its body is trusted: a bearer token, a Standard Webhooks
signature, the content type, and the client's rate."""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import math
import time
from collections.abc import Mapping

from pydantic import SecretStr

from streamflow.connectors import ConnectorError

SECRET_PREFIX = "whsec_"
JSON_TYPES = ("application/json",)


class Refused(Exception):
    """The request is answered ``status`` with ``reason``; nothing is published."""

    def __init__(self, status: int, reason: str, headers: Mapping[str, str] | None = None
                 ) -> None:
        super().__init__(reason)
        self.status, self.reason, self.headers = status, reason, dict(headers or {})


def fingerprint(kind: str, secret: bytes) -> str:
    """Names a credential in idempotency records without revealing it."""
    digest = hashlib.blake2b(secret, digest_size=6, person=b"sf-webhook-cred").hexdigest()
    return f"{kind}:{digest}"


def signing_key(secret: SecretStr) -> bytes:
    """The HMAC key of a Standard Webhooks secret: ``whsec_`` (optional) then base64."""
    raw = secret.get_secret_value().strip().removeprefix(SECRET_PREFIX)
    try:
        key = base64.b64decode(raw, validate=True)
    except (binascii.Error, ValueError):
        key = b""
    if len(key) < 16:  # a ValueError: the config's validator reports it as a setting's error
        raise ConnectorError(
            "signing_secret must be whsec_ followed by the base64 of at least 16 random bytes "
            "(as Standard Webhooks senders issue it); generate one with: python -c \"import "
            "base64,os; print('whsec_' + base64.b64encode(os.urandom(32)).decode())\"")
    return key


def check_token(headers: Mapping[str, str], token: SecretStr) -> None:
    got = headers.get("Authorization", "")
    if not got:
        raise Refused(401, "missing Authorization: Bearer <token>", {"WWW-Authenticate": "Bearer"})
    want = f"Bearer {token.get_secret_value()}"
    if not hmac.compare_digest(got.encode(), want.encode()):
        raise Refused(401, "invalid bearer token", {"WWW-Authenticate": "Bearer"})


def check_signature(headers: Mapping[str, str], body: bytes, key: bytes, tolerance_s: float,
                    now: float | None = None) -> str:
    """Verify per Standard Webhooks; returns the webhook-id (signed, so fit as idempotency key)."""
    names = ("webhook-id", "webhook-timestamp", "webhook-signature")
    missing = [n for n in names if not headers.get(n)]
    if missing:
        raise Refused(401, f"missing {', '.join(missing)}: requests must be signed per "
                           "Standard Webhooks")
    msg_id, ts_raw, sigs = (headers[n].strip() for n in names)
    try:
        ts = int(ts_raw)
    except ValueError:
        raise Refused(401, "webhook-timestamp must be whole seconds since the epoch") from None
    skew = (time.time() if now is None else now) - ts
    if abs(skew) > tolerance_s:
        raise Refused(401, f"webhook-timestamp is {abs(skew):.0f}s "
                           f"{'old' if skew > 0 else 'in the future'} (tolerance "
                           f"{tolerance_s:g}s): sign each attempt afresh, check the clock")
    mac = hmac.new(key, f"{msg_id}.{ts_raw}.".encode() + body, hashlib.sha256).digest()
    want = base64.b64encode(mac)
    for entry in sigs.split():
        version, _, sig = entry.partition(",")
        if version == "v1" and hmac.compare_digest(sig.encode(), want):
            return msg_id
    raise Refused(401, "no webhook-signature matches the body (v1, HMAC-SHA256 over "
                       "'<webhook-id>.<webhook-timestamp>.<body>')")


def check_content_type(content_type: str) -> None:
    media = content_type.split(";", 1)[0].strip().lower()
    if media not in JSON_TYPES and not media.endswith("+json"):
        raise Refused(415, f"Content-Type must be application/json, got "
                           f"{media or 'none'}", {"Accept-Post": "application/json"})


class RateLimit:
    """A token bucket per client: ``per_s`` requests a second, ``burst`` at once."""

    def __init__(self, per_s: float, burst: int) -> None:
        self.per_s, self.burst = per_s, float(burst)
        self._buckets: dict[str, tuple[float, float]] = {}  # client: (tokens, at)

    def take(self, client: str) -> None:
        now = time.monotonic()
        tokens, at = self._buckets.get(client, (self.burst, now))
        tokens = min(self.burst, tokens + (now - at) * self.per_s)
        if tokens < 1.0:
            self._buckets[client] = (tokens, now)
            wait = math.ceil((1.0 - tokens) / self.per_s)
            raise Refused(429, f"more than {self.per_s:g} requests a second from {client}; "
                               f"retry in {wait}s", {"Retry-After": str(wait)})
        self._buckets[client] = (tokens - 1.0, now)
        if len(self._buckets) > 10_000:  # forget clients whose bucket has refilled
            full = self.burst / self.per_s
            self._buckets = {c: b for c, b in self._buckets.items() if now - b[1] < full}
