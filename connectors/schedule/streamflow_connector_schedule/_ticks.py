"""The ``interval`` and ``cron`` tick sources: one record per scheduled instant.

A tick's identity is its scheduled instant, never the wall-clock time it was emitted at, so its
record id (``<name>:<tick>``) and its data are the same however late or often it is emitted;
a re-emitted tick dedupes downstream.

Position: the last acknowledged tick (and how many were acknowledged) is written atomically to
``<state_dir>/<source name>.ticks.json`` in ``ack()``. On restart the source resumes strictly
after that tick, so an acknowledged tick is never emitted again and a tick that was emitted but
not acknowledged is emitted again (same id). Ticks that fell due while the worker was down are
all emitted at once with ``catch_up=true``; with ``catch_up=false`` (the default, so a long
outage does not flood the pipeline) only the most recent due tick is emitted and the older
ones are skipped.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections.abc import AsyncGenerator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import orjson
from pydantic import BaseModel, ConfigDict, Field, field_validator

from streamflow.connectors import (
    ConnectorContext,
    ConnectorError,
    ConnectorSpec,
    SourceBatch,
    SourceRecord,
    write_atomic,
)

Clock = Callable[[], datetime]
Sleep = Callable[[float], Awaitable[None]]
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
MAX_BATCH = 500  # ticks per batch while catching up


def _utc(dt: datetime) -> datetime:
    """Naive datetimes are taken as UTC: a schedule must not depend on the host's zone."""
    return dt.replace(tzinfo=UTC) if dt.tzinfo is None else dt.astimezone(UTC)


def _now() -> datetime:
    return datetime.now(UTC)


class _TickConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    start: datetime | None = Field(
        default=None,
        description="first instant ticks are considered from (ISO; naive means UTC); "
        "default: the time the source first starts")
    count: int | None = Field(
        default=None, ge=1,
        description="stop after this many acknowledged ticks, across restarts; None: forever")
    catch_up: bool = Field(
        default=False,
        description="after downtime, emit every missed tick (true) or only the most recent "
        "due one (false)")
    name: str | None = Field(
        default=None,
        description="the 'name' field of each tick; default: the source's name in the pipeline")


class IntervalConfig(_TickConfig):
    every_s: float = Field(gt=0, description="seconds between ticks; ticks align to `start`, "
                           "or to multiples of the interval since the Unix epoch")


class CronConfig(_TickConfig):
    schedule: str = Field(description="cron expression (5, 6 or 7 fields), e.g. '*/5 * * * *'")
    timezone: str = Field(default="UTC", description="IANA zone the expression is read in")

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, v: str) -> str:
        try:
            ZoneInfo(v)
        except (ZoneInfoNotFoundError, ValueError) as e:
            raise ValueError(f"unknown time zone {v!r}") from e
        return v


def interval_tick_at_or_after(t: datetime, every_s: float, anchor: datetime = EPOCH) -> datetime:
    """The first tick ``anchor + k * every_s`` (k an integer) at or after ``t``.

    Integer microseconds, so a 0.05 s interval gives exactly the same instants on every run.
    """
    step = _step_us(every_s)
    delta = (_utc(t) - _utc(anchor)) // timedelta(microseconds=1)
    k = math.ceil(delta / step) if delta % step else delta // step
    return _utc(anchor) + timedelta(microseconds=k * step)


def _step_us(every_s: float) -> int:
    return max(1, round(every_s * 1_000_000))


def cron_tick_at_or_after(t: datetime, schedule: str, timezone: str = "UTC") -> datetime:
    """The first instant matching cron ``schedule`` (read in ``timezone``) at or after ``t``."""
    croniter = _croniter()
    local = _utc(t).astimezone(ZoneInfo(timezone)) - timedelta(microseconds=1)
    nxt: datetime = croniter(schedule, local).get_next(datetime)
    return _utc(nxt)


def validate_cron(schedule: str) -> None:
    """Raise a ConnectorError naming ``schedule`` if croniter cannot read it."""
    croniter = _croniter()
    try:
        croniter(schedule, _now())
    except (ValueError, KeyError) as e:
        raise ConnectorError(f"cron source: invalid schedule {schedule!r}: {e}") from e


def _croniter() -> Any:
    try:  # deferred: croniter is the optional `cron` extra
        from croniter import croniter
    except ImportError as e:
        raise ConnectorError(
            "the cron source needs croniter: pip install 'streamflow[cron]'") from e
    return croniter


class _TickSource:
    """Shared loop of both schedules; subclasses say where the next tick at or after t is."""

    kind = "ticks"

    def __init__(self, config: _TickConfig, *, clock: Clock | None = None,
                 sleep: Sleep | None = None) -> None:
        self.cfg = config
        self._clock = clock or _now
        self._sleep_fn = sleep
        self._stopped = asyncio.Event()
        self.name = config.name or self.kind
        self.state_file: Path | None = None
        self.last_acked: datetime | None = None
        self.acked = 0

    def at_or_after(self, t: datetime) -> datetime:
        raise NotImplementedError

    def at_or_before(self, t: datetime) -> datetime:
        raise NotImplementedError

    def _after(self, t: datetime) -> datetime:
        return self.at_or_after(t + timedelta(microseconds=1))

    def _local_iso(self, tick: datetime) -> str:
        return tick.isoformat()

    async def setup(self, ctx: ConnectorContext) -> None:
        self.name = self.cfg.name or ctx.name
        self._stopped = asyncio.Event()  # the same object may serve a later run
        self.state_file = Path(ctx.state_dir) / f"{ctx.name}.ticks.json"
        if self.state_file.exists():
            try:
                state = orjson.loads(self.state_file.read_bytes())
                self.last_acked = datetime.fromisoformat(state["last_tick"])
                self.acked = int(state["acked"])
            except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as e:
                raise ConnectorError(
                    f"{self.kind} source {ctx.name!r}: unreadable position file "
                    f"{self.state_file}: {e}; delete it to start afresh") from e

    def _first(self) -> datetime:
        if self.last_acked is not None:
            return self._after(self.last_acked)
        return self.at_or_after(self.cfg.start if self.cfg.start is not None else self._clock())

    async def read(self) -> AsyncGenerator[SourceBatch, None]:
        nxt = self._first()
        emitted = self.acked
        while not self._stopped.is_set():
            if self.cfg.count is not None and emitted >= self.cfg.count:
                return
            now = _utc(self._clock())
            if nxt > now:
                await self._sleep((nxt - now).total_seconds())
                continue
            if self.cfg.catch_up:  # every due tick, in order, bounded per batch
                limit = MAX_BATCH if self.cfg.count is None else self.cfg.count - emitted
                due = [nxt]
                while len(due) < limit and (following := self._after(due[-1])) <= now:
                    due.append(following)
            else:  # only the most recent due tick; older missed ones are skipped
                due = [max(nxt, self.at_or_before(now))]
            nxt = self._after(due[-1])
            emitted += len(due)
            yield SourceBatch([self._record(t) for t in due], position=due[-1].isoformat())

    def _record(self, tick: datetime) -> SourceRecord:
        iso = tick.isoformat()
        data = {"tick": iso, "scheduled_at": self._local_iso(tick), "name": self.name}
        return SourceRecord(data, {self.kind: self.name, "tick": iso}, f"{self.name}:{iso}")

    async def _sleep(self, seconds: float) -> None:
        if self._sleep_fn is not None:
            await self._sleep_fn(seconds)
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopped.wait(), timeout=max(seconds, 0.0))

    async def ack(self, batch: SourceBatch) -> None:
        self.last_acked = datetime.fromisoformat(batch.position)
        self.acked += len(batch.records)
        if self.state_file is not None:
            body = orjson.dumps({"last_tick": batch.position, "acked": self.acked})
            await asyncio.to_thread(write_atomic, self.state_file, body)

    async def stop(self) -> None:
        self._stopped.set()


class IntervalSource(_TickSource):
    """Ticks every ``every_s`` seconds, aligned to ``start`` (or the epoch)."""

    kind = "interval"

    def __init__(self, config: IntervalConfig, *, clock: Clock | None = None,
                 sleep: Sleep | None = None) -> None:
        super().__init__(config, clock=clock, sleep=sleep)
        self.icfg = config

    def at_or_after(self, t: datetime) -> datetime:
        anchor = self.icfg.start if self.icfg.start is not None else EPOCH
        return interval_tick_at_or_after(t, self.icfg.every_s, anchor)

    def at_or_before(self, t: datetime) -> datetime:
        anchor = self.icfg.start if self.icfg.start is not None else EPOCH
        tick = interval_tick_at_or_after(t, self.icfg.every_s, anchor)
        step = timedelta(microseconds=_step_us(self.icfg.every_s))
        return tick if tick <= _utc(t) else tick - step


class CronSource(_TickSource):
    """Ticks at each instant matching a cron expression, read in ``timezone``."""

    kind = "cron"

    def __init__(self, config: CronConfig, *, clock: Clock | None = None,
                 sleep: Sleep | None = None) -> None:
        super().__init__(config, clock=clock, sleep=sleep)
        self.ccfg = config

    async def setup(self, ctx: ConnectorContext) -> None:
        try:
            validate_cron(self.ccfg.schedule)
        except ConnectorError as e:
            raise ConnectorError(f"source {ctx.name!r}: {e}") from e
        await super().setup(ctx)

    def at_or_after(self, t: datetime) -> datetime:
        return cron_tick_at_or_after(t, self.ccfg.schedule, self.ccfg.timezone)

    def at_or_before(self, t: datetime) -> datetime:
        local = _utc(t).astimezone(ZoneInfo(self.ccfg.timezone)) + timedelta(microseconds=1)
        prev: datetime = _croniter()(self.ccfg.schedule, local).get_prev(datetime)
        return _utc(prev)

    def _local_iso(self, tick: datetime) -> str:
        return tick.astimezone(ZoneInfo(self.ccfg.timezone)).isoformat()


INTERVAL = ConnectorSpec(name="interval", source=IntervalSource, source_config=IntervalConfig)
CRON = ConnectorSpec(name="cron", source=CronSource, source_config=CronConfig, extra="cron")
