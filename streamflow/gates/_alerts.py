"""Alerts for quality gates: an :class:`Alerter` fans each :class:`Alert` out to its sinks.

Delivery runs in background tasks so a slow or dead endpoint never holds up a stage; a failed
delivery is counted and logged, never raised. Webhook deliveries carry an ``Idempotency-Key``
(the alert's ``dedupe_key``) so a receiver can drop the duplicates our retries may produce.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import orjson

from streamflow.connectors import Retries, post_with_retries, redact
from streamflow.errors import AlertDeliveryError, ConfigError
from streamflow.model import Alert, AlertSink

if TYPE_CHECKING:
    from aiohttp import ClientSession

log = logging.getLogger("streamflow.alerts")
ENV_WEBHOOK = "STREAMFLOW_ALERT_WEBHOOK"


class LogAlerts:
    """Every alert as a WARNING on ``streamflow.alerts``: visible even with no endpoint set."""

    name = "log"

    async def send(self, alert: Alert) -> None:
        # The summary names the partition; "stage" keeps the line greppable by stage.
        log.warning("ALERT stage %s: %s", alert.stage, alert.summary,
                    extra={"alert": alert.to_json()})

    async def close(self) -> None:
        pass


class WebhookAlerts:
    """POSTs each alert as a JSON object, retried with backoff like the webhook sink."""

    def __init__(self, url: str, *, headers: Mapping[str, str] | None = None,
                 timeout_s: float = 5.0, max_retries: int = 5, retry_backoff_s: float = 0.5,
                 max_backoff_s: float = 30.0) -> None:
        location = redact(url)
        if not re.match(r"^https?://[^/\s]+", url):
            raise ConfigError(f"alert webhook {location!r} must be an http:// or https:// URL")
        if timeout_s <= 0 or max_retries < 0 or retry_backoff_s < 0 or max_backoff_s < 0:
            raise ConfigError("WebhookAlerts needs timeout_s > 0 and max_retries, "
                             "retry_backoff_s, max_backoff_s >= 0")
        _aiohttp()  # fail at startup, not on the first alert, when aiohttp is missing
        self.url, self.location, self.name = url, location, f"webhook {location}"
        self.headers = dict(headers or {})
        self.timeout_s = timeout_s
        self.retries = Retries(max_retries, retry_backoff_s, max_backoff_s)
        self._session: ClientSession | None = None

    async def send(self, alert: Alert) -> None:
        aiohttp = _aiohttp()
        if self._session is None or self._session.closed:  # created in the running loop
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=self.timeout_s), headers=self.headers)
        key = alert.dedupe_key
        # Retries at INFO: a WARNING on the alerts logger means "an alert" (LogAlerts).
        await post_with_retries(
            self._session, self.url, orjson.dumps(alert.to_json()), key,
            f"POST {self.location} (alert {alert.kind} {alert.stage}, Idempotency-Key {key})",
            self.retries, AlertDeliveryError, log, logging.INFO)

    async def close(self) -> None:
        if self._session is not None:
            session, self._session = self._session, None
            await session.close()


class Alerter:
    """Fans alerts out to every sink in the background: a slow or failing webhook never holds up
    a stage. ``sent`` and ``failed`` count deliveries (one alert to one sink)."""

    def __init__(self, sinks: Sequence[AlertSink]) -> None:
        self.sinks = tuple(sinks)
        self.sent = 0
        self.failed = 0
        self._tasks: set[asyncio.Task[None]] = set()  # strong refs: the loop keeps only weak
        self._closed = False

    def emit(self, alert: Alert) -> None:
        """Schedule delivery to every sink and return at once; needs a running event loop."""
        if self._closed:
            self.failed += len(self.sinks)
            log.error("alert %s for %s dropped: the alerter is closed", alert.kind, alert.stage)
            return
        loop = asyncio.get_running_loop()
        for sink in self.sinks:
            task = loop.create_task(self._deliver(sink, alert), name=f"alert-{sink.name}")
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def flush(self, timeout_s: float = 30.0) -> None:
        """Wait for in-flight deliveries; after ``timeout_s`` leave the rest running, logged."""
        deadline = asyncio.get_running_loop().time() + timeout_s
        while self._tasks:  # a delivery may finish while another is emitted: loop until idle
            left = deadline - asyncio.get_running_loop().time()
            if left <= 0:
                log.warning("%d alert deliveries still in flight after %.1fs",
                            len(self._tasks), timeout_s)
                return
            await asyncio.wait(set(self._tasks), timeout=left)

    async def close(self, timeout_s: float = 30.0) -> None:
        """Flush, cancel what is still stuck (counted as failed), then close every sink."""
        self._closed = True
        await self.flush(timeout_s)
        stuck = set(self._tasks)
        for task in stuck:
            task.cancel()
        if stuck:
            await asyncio.wait(stuck)
        for sink in self.sinks:
            try:
                await sink.close()
            except Exception as e:
                log.error("closing alert sink %s failed: %s: %s", sink.name, type(e).__name__, e)

    async def _deliver(self, sink: AlertSink, alert: Alert) -> None:
        try:
            await sink.send(alert)
        except asyncio.CancelledError:
            self._failed(sink, alert, "cancelled before it was delivered")
            raise
        except Exception as e:
            self._failed(sink, alert, f"{type(e).__name__}: {e}")
        else:
            self.sent += 1

    def _failed(self, sink: AlertSink, alert: Alert, error: str) -> None:
        self.failed += 1
        log.error("alert sink %s could not deliver alert %s (%s partition %s, run %s, key %s): %s",
                  sink.name, alert.kind, alert.stage, alert.partition, alert.run_id,
                  alert.dedupe_key, error, extra={"alert": alert.to_json()})


def alert_sinks_from_env(env: Mapping[str, str]) -> list[AlertSink]:
    """Always a log sink; plus one webhook per URL in ``STREAMFLOW_ALERT_WEBHOOK`` (commas)."""
    sinks: list[AlertSink] = [LogAlerts()]
    urls = [u.strip() for u in env.get(ENV_WEBHOOK, "").split(",")]
    sinks.extend(WebhookAlerts(u) for u in urls if u)
    return sinks


def _aiohttp() -> Any:
    try:  # Deferred: aiohttp is the optional `webhook` extra, needed only for webhook alerts.
        import aiohttp
    except ImportError as e:
        raise ConfigError(
            "webhook alerts need aiohttp: pip install 'streamflow[webhook]'") from e
    return aiohttp

