"""HTTP POST with an ``Idempotency-Key`` and retries, shared by the webhook sink and webhook
alerts, so both back off, honour ``Retry-After`` and redact credentials the same way."""

from __future__ import annotations

import asyncio
import logging
import random
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from aiohttp import ClientSession

log = logging.getLogger("streamflow.connectors.http")


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
    # Deferred: aiohttp is an optional extra; whoever built the session has imported it.
    import aiohttp

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
            last = f"{type(e).__name__}: {e}".replace(url, redact(url))  # InvalidURL names it
        if attempt < retries.max_retries:
            logger.log(retry_level, "%s failed (attempt %d): %s; retrying", what, attempt + 1,
                       last)
            await asyncio.sleep(retries.delay(attempt, retry_after))
    raise error(f"{what} failed after {retries.max_retries + 1} attempts; last error: {last}")


def redact(url: str) -> str:
    """A URL fit for logs and errors: credentials never shown, neither ``user:password@`` nor
    in the query or fragment (``?token=...``): which parameter carries a secret cannot be
    known, so every value (and a part with no name) is masked and only the names stay."""
    url = re.sub(r"//[^/@?#]*@", "//***@", url)
    head, sep, fragment = url.partition("#")
    base, qsep, query = head.partition("?")
    if qsep:  # a bare part (``?s3cret``) may be a token too
        query = "&".join(p.split("=", 1)[0] + "=***" if "=" in p else "***" if p else p
                         for p in query.split("&"))
    return base + qsep + query + (sep + "***" if sep and fragment else sep)


def _seconds(raw: str | None) -> float | None:
    try:
        return max(0.0, float(raw)) if raw is not None else None
    except ValueError:
        return None  # an HTTP date: fall back to our own backoff
