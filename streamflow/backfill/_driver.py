"""Driving a backfill: publish its slices into the lane a few at a time, watch the stages'
groups commit past them, and keep the job record current so a crash resumes where it stopped.

Flow control is by slices in flight (``max_concurrency``): a slice is published only when
fewer than that many are still being worked on, so the lane never holds more than a few
partitions' worth of records, and cancelling stops within those. ``rate`` caps records per
second on top. Priority over live input is the workers' business (the lane is read only when
the live topic has no full batch waiting).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass

from streamflow.model import Settings, asset_topic, jobs_topic, lane_topic, runs_topic, stage_group
from streamflow.state import read_ledger
from streamflow.transports import Transport

from ._jobs import BackfillJob, Slice, Status, load_jobs
from ._planner import Plan

log = logging.getLogger("streamflow.backfill")

CHUNK = 500
AFTER_SLICE: list[Callable[[int], None]] = []
"""Called, in order, each time a slice is done and the job record saying so is saved, with the
number of the job's slices now done. Empty in normal operation; observers and tests
(``tests/faults.py`` crashes the driver here) may append to it."""


@dataclass
class Progress:
    """What a progress bar shows, after every change."""

    job: BackfillJob
    records_sent: int
    started: float
    waiting_s: float
    """Seconds without a slice finishing: no worker may be serving the stages."""


class Driver:
    def __init__(self, job: BackfillJob, plan: Plan, transport: Transport, settings: Settings,
                 on_progress: Callable[[Progress], None] | None = None) -> None:
        self.job, self.plan, self.t, self.s = job, plan, transport, settings
        self.ns = settings.namespace
        self.lane = lane_topic(self.ns, job.asset)
        self.groups = [stage_group(self.ns, st) for st in job.stages]
        self.on_progress = on_progress
        self.sent = 0
        self._stop = asyncio.Event()
        self._saved = 0.0
        self._last_done = time.monotonic()
        self._started = time.monotonic()

    def request_stop(self) -> None:
        """Ctrl-C: stop publishing; the job is left ``interrupted`` for ``resume``."""
        self._stop.set()

    async def run(self) -> BackfillJob:
        job = self.job
        await self.t.ensure_topics([jobs_topic(self.ns)], compacted=[jobs_topic(self.ns)])
        await self.t.ensure_topics([self.lane], partitions={self.lane: await self.t
                                   .partition_count(asset_topic(self.ns, job.asset))})
        if self.plan.dead or self.plan.settle:
            await self.t.ensure_topics(sorted({m.topic for m in self.plan.dead}))
            await self.t.publish(self.plan.dead + self.plan.settle)
        job.status = "running"
        job.driver = f"{socket.gethostname()}:{os.getpid()}"
        await self._save(force=True)
        try:
            await self._drive()
        except asyncio.CancelledError:
            job.status = "interrupted"
            raise
        except Exception as e:
            job.status, job.error = "failed", f"{type(e).__name__}: {e}"
            raise
        finally:
            if job.status == "running":
                job.status = "interrupted"
            with contextlib.suppress(Exception):
                await asyncio.shield(self._save(force=True))
        return job

    async def _drive(self) -> None:
        job = self.job
        flight: list[int] = [i for i, s in enumerate(job.slices) if s.state == "published"]
        pending = [i for i, s in enumerate(job.slices) if s.state == "pending"]
        next_check = 0.0
        while pending or flight:
            if self._stop.is_set():
                return
            if time.monotonic() >= next_check:
                if await self._cancelled():
                    job.status = "cancelled"
                    return
                next_check = time.monotonic() + 2.0
            if flight:
                await self._settle(flight)
            if pending and len(flight) < job.max_concurrency:
                i = pending.pop(0)
                await self._publish(i, job.slices[i])
                flight.append(i)
                continue
            await self._beat()
            await asyncio.sleep(0.05)
        job.status = "completed"
        job.completed_ms = int(time.time() * 1000)

    async def _publish(self, i: int, sl: Slice) -> None:
        msgs = self.plan.messages[i]
        for k in range(0, len(msgs), CHUNK):
            chunk = msgs[k:k + CHUNK]
            await self._throttle(len(chunk))
            await self.t.publish(chunk)
            self.sent += len(chunk)
        # Done once each stage's group has committed the lane up to here: then every record
        # of this slice (and of earlier ones) has been run, deduped or sent to retry.
        sl.targets = await self.t.end_offsets(self.lane) if msgs else {}
        sl.state = "published"
        await self._save()

    async def _throttle(self, n: int) -> None:
        rate = self.job.rate
        if not rate:
            return
        ahead = self.sent / rate - (time.monotonic() - self._started)
        if ahead > 0:
            await asyncio.sleep(ahead)

    async def _settle(self, flight: list[int]) -> None:
        commits = {g: await self.t.committed(g, self.lane) for g in self.groups}
        for i in list(flight):
            sl = self.job.slices[i]
            if all(commits[g].get(p, 0) >= off for g in self.groups
                   for p, off in sl.targets.items()):
                sl.state = "done"
                flight.remove(i)
                self._last_done = time.monotonic()
                await self._save(force=True)
                if AFTER_SLICE:
                    done = sum(1 for s in self.job.slices if s.state == "done")
                    for callback in tuple(AFTER_SLICE):
                        callback(done)

    async def _cancelled(self) -> bool:
        current = (await load_jobs(self.t, self.ns)).get(self.job.id)
        return current is not None and current.status == "cancelled"

    async def _beat(self) -> None:
        if time.monotonic() - self._saved > 2.0:
            await self._save()

    async def _save(self, force: bool = False) -> None:
        now = time.monotonic()
        if self.on_progress is not None:
            self.on_progress(Progress(self.job, self.sent, self._started,
                                      now - self._last_done))
        if not force and now - self._saved < 0.5:
            return
        self._saved = now
        self.job.heartbeat_ms = int(time.time() * 1000)
        await self.t.publish([self.job.message(self.ns)])


async def set_status(transport: Transport, namespace: str, job: BackfillJob,
                     status: Status) -> None:
    job.status = status
    await transport.publish([job.message(namespace)])


async def run_counts(transport: Transport, namespace: str, job_id: str) -> dict[str, int]:
    """The backfill's runs by latest status, from the ledger."""
    counts: dict[str, int] = {}
    for d in (await read_ledger(transport, runs_topic(namespace))).values():
        if d.get("backfill") == job_id:
            counts[d["status"]] = counts.get(d["status"], 0) + 1
    return counts

