"""What the worker's HTTP port reports: liveness, readiness, metrics and a status summary.

Liveness fails only when a consumer loop died (restarting the process is the cure); readiness
holds off until every consumer has joined its group and restored its barrier state, and drops
again while draining, so an orchestrator routes nothing to a worker that is not processing.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Collection, Sequence
from typing import Any, Literal, Protocol

from ._http import Handler, json_response
from ._metrics import Metrics

Phase = Literal["starting", "running", "draining", "stopped"]


class Subscribed(Protocol):
    """What a probe reads of a consumer group member (see ``Subscription``)."""

    group: str
    exactly_once: bool

    @property
    def assigned(self) -> Collection[int]: ...

    async def lags(self) -> dict[tuple[str, int], int]: ...


class OpenState(Protocol):
    first_seen_ms: int


class Reporting(Protocol):
    """A consumer loop as a probe sees it: the engine's stage and sink runners."""

    name: str
    group: str

    @property
    def kind(self) -> str: ...

    @property
    def sub(self) -> Subscribed | None: ...

    def restoring(self) -> bool: ...

    def has_gate(self) -> bool: ...

    def open_states(self) -> Sequence[OpenState]: ...


class Probe:
    open_paths = ("/healthz", "/readyz")
    """Routes an orchestrator probes: open even when the port has a token."""

    def __init__(self, pipeline: str, transport: str, metrics: Metrics,
                 lag_ttl_s: float = 5.0) -> None:
        self.pipeline, self.transport, self.metrics = pipeline, transport, metrics
        self.lag_ttl_s = lag_ttl_s
        """How long a lag reading serves ``/status`` and ``/metrics``: each costs broker round
        trips per consumer group, and a scrape loop or a curl in a loop must not add load."""
        self._lag_at = -float("inf")
        self._lag_lock = asyncio.Lock()
        self.consumers: Sequence[Reporting] = ()
        self.tasks: list[asyncio.Task[None]] = []
        self.phase: Phase = "starting"
        self.started = time.time()

    def dead(self) -> list[str]:
        return [t.get_name() for t in self.tasks if t.done() and not t.cancelled()
                and self.phase in ("running", "draining")]

    def ready(self) -> tuple[bool, str]:
        if self.phase != "running":
            return False, self.phase
        dead = self.dead()
        if dead:
            return False, f"consumer stopped: {', '.join(dead)}"
        restoring = [c.name for c in self.consumers if c.restoring()]
        if restoring:
            return False, f"restoring state of {', '.join(sorted(set(restoring)))}"
        return True, "ready"

    async def refresh_lag(self) -> None:
        """Lags need broker round trips: read at most once per ``lag_ttl_s``, and requests
        that arrive during a reading share it."""
        async with self._lag_lock:
            if time.monotonic() - self._lag_at < self.lag_ttl_s:
                return
            lag: dict[tuple[str, str, int], int] = {}
            for c in self.consumers:
                if c.sub is None:
                    continue
                for (topic, partition), n in (await c.sub.lags()).items():
                    lag[(c.group, topic, partition)] = n
            self.metrics.snapshot.lag = lag
            self._lag_at = time.monotonic()

    async def refresh(self) -> None:
        """Barrier ages need a walk of local state, taken per scrape; lags are cached."""
        await self.refresh_lag()
        snap = self.metrics.snapshot
        now_ms = time.time() * 1000
        opened: dict[str, int] = {}
        oldest: dict[str, float] = {}
        for c in self.consumers:
            for state in c.open_states():
                opened[c.name] = opened.get(c.name, 0) + 1
                age = max(0.0, (now_ms - state.first_seen_ms) / 1000)
                oldest[c.name] = max(oldest.get(c.name, 0.0), age)
            if c.has_gate() and c.name not in opened:
                opened[c.name], oldest[c.name] = 0, 0.0
        snap.open_barriers, snap.oldest_open_s = opened, oldest

    def routes(self) -> dict[str, Handler]:
        return {"/healthz": self._healthz, "/readyz": self._readyz,
                "/metrics": self._metrics, "/status": self._status}

    async def _healthz(self) -> tuple[int, str, bytes]:
        dead = self.dead()
        if dead:
            return json_response(503, {"status": "failing", "dead_consumers": dead})
        return json_response(200, {"status": "ok", "phase": self.phase})

    async def _readyz(self) -> tuple[int, str, bytes]:
        ok, why = self.ready()
        return json_response(200 if ok else 503, {"ready": ok, "reason": why})

    async def _metrics(self) -> tuple[int, str, bytes]:
        await self.refresh()
        return 200, "text/plain; version=0.0.4; charset=utf-8", self.metrics.prometheus().encode()

    async def _status(self) -> tuple[int, str, bytes]:
        await self.refresh()
        return json_response(200, self.status())

    def status(self) -> dict[str, Any]:
        mt, snap = self.metrics, self.metrics.snapshot
        stages: dict[str, dict[str, Any]] = {}
        for c in self.consumers:
            entry = stages.setdefault(c.name, {"kind": c.kind, "lag": 0, "runs": {}})
            entry["lag"] += sum(n for (g, _, _), n in snap.lag.items() if g == c.group)
            if c.name in snap.open_barriers:
                entry["open_barriers"] = snap.open_barriers[c.name]
                entry["oldest_open_barrier_s"] = round(snap.oldest_open_s[c.name], 3)
            if mt.held.get(c.name):
                entry["held_partitions"] = int(mt.held[c.name])
        for (stage, status), n in mt.runs.items():
            stages.setdefault(stage, {"kind": "stage", "lag": 0, "runs": {}})["runs"][status] = n
        for (kind, name), n in mt.dead_letters.items():
            stages.setdefault(name, {"kind": kind, "lag": 0, "runs": {}})["dead_lettered"] = n
        ok, why = self.ready()
        return {
            "pipeline": self.pipeline, "transport": self.transport, "phase": self.phase,
            "ready": ok, "reason": why, "uptime_s": round(time.time() - self.started, 1),
            "stages": stages,
            "lag": [{"group": g, "topic": t, "partition": p, "lag": n}
                    for (g, t, p), n in sorted(snap.lag.items())],
            "recent_failures": [f.to_json() for f in reversed(mt.recent)][:20],
            # Which input partitions this process owns now, per consumer group.
            "assignments": {c.group: sorted(c.sub.assigned) for c in self.consumers
                            if c.sub is not None},
            "exactly_once": any(c.sub.exactly_once for c in self.consumers
                                if c.sub is not None),
        }
