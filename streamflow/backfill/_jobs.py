"""Backfills: what a backfill is, where its record lives, and what it replays.

A backfill replays one asset's history for an event-time range into the asset's backfill lane
(``<namespace>.backfill.<asset>``), beside its live topic. The stages reading the asset read
the lane with the same consumer group as the live topic, so partition n of both is decided by
one worker, whose run ledger already knows what live work fired: an arrival seen by both is run
once (its run id derives from its arrival id), whichever lane gets there first.

The job itself (its range, its slices and how far each got) is one record on the compacted
``<namespace>.backfills`` topic, so ``streamflow backfill list`` reads it from any machine and a
driver that crashed resumes where the record says it stopped.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import BaseModel, ValidationError

from streamflow.errors import BackfillError
from streamflow.model import (
    Asset,
    OutMessage,
    Pipeline,
    jobs_topic,
    stable_id,
)
from streamflow.transports import Transport

log = logging.getLogger("streamflow.backfill")

Reprocess = Literal["none", "failed", "all"]
Status = Literal["planned", "running", "interrupted", "cancelled", "completed", "failed"]
MAX_SLICES = 1000
"""Partitions are tracked in at most this many slices (a keyed stream has a partition per key)."""




class Slice(BaseModel):
    """Consecutive partition keys replayed together; most often exactly one (a day)."""

    first: str
    last: str
    keys: int
    records: int
    skipped: int = 0
    """Records whose runs had already reached a final status (``--reprocess none``)."""
    state: Literal["pending", "published", "done"] = "pending"
    targets: dict[int, int] = {}
    """Lane end offsets once published: done when each stage's group has committed past."""


JOB_VERSION = 1


class BackfillJob(BaseModel):
    v: int = JOB_VERSION
    """The record's format (absent: written before the field, the same format)."""
    id: str
    target: str
    """``module:pipeline`` as given, so ``resume`` can load it again."""
    pipeline: str
    asset: str
    stages: list[str]
    start: datetime
    end: datetime
    partitions: list[str] | None = None
    reprocess: Reprocess = "none"
    max_concurrency: int = 4
    rate: float | None = None
    via: str = ""
    status: Status = "running"
    slices: list[Slice] = []
    created_ms: int = 0
    updated_ms: int = 0
    heartbeat_ms: int = 0
    completed_ms: int | None = None
    error: str | None = None
    driver: str = ""
    """``host:pid`` of the process feeding it: ``resume`` refuses while that one lives."""

    @property
    def keys_total(self) -> int:
        return sum(s.keys for s in self.slices)

    @property
    def keys_done(self) -> int:
        return sum(s.keys for s in self.slices if s.state == "done")

    @property
    def records_total(self) -> int:
        return sum(s.records for s in self.slices)

    @property
    def records_done(self) -> int:
        return sum(s.records for s in self.slices if s.state == "done")

    def driver_alive(self) -> bool:
        """A running job's driver still beats (and, on this host, its process exists)."""
        if self.status != "running" or time.time() * 1000 - self.heartbeat_ms > 15_000:
            return False
        host, _, pid = self.driver.rpartition(":")
        if host != socket.gethostname() or not pid.isdigit():
            return True
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True

    def shown_status(self, now_ms: int | None = None) -> str:
        """A running job whose driver stopped beating crashed: it is shown as interrupted."""
        now_ms = now_ms if now_ms is not None else int(time.time() * 1000)
        if self.status == "running" and now_ms - self.heartbeat_ms > 15_000:
            return "interrupted"
        return self.status

    def message(self, namespace: str) -> OutMessage:
        self.updated_ms = int(time.time() * 1000)
        return OutMessage(jobs_topic(namespace), self.model_dump_json().encode(),
                          self.id.encode(), [])


def read_job(value: bytes) -> BackfillJob | None:
    """One job record; None when unreadable, or of a newer format (warned, not misread)."""
    try:
        job = BackfillJob.model_validate_json(value)
    except ValidationError:
        return None
    if job.v > JOB_VERSION:
        log.warning("backfill job %s is of format v%d, newer than this StreamFlow's v%d; "
                    "skipped (upgrade to manage it)", job.id, job.v, JOB_VERSION)
        return None
    return job


async def load_jobs(transport: Transport, namespace: str) -> dict[str, BackfillJob]:
    jobs: dict[str, BackfillJob] = {}
    for m in await transport.read_topic(jobs_topic(namespace)):
        job = read_job(m.value)
        if job is not None:
            jobs[job.id] = job
    return jobs


async def find_job(transport: Transport, namespace: str, prefix: str) -> BackfillJob:
    jobs = await load_jobs(transport, namespace)
    match = [j for j in jobs.values() if j.id.startswith(prefix)]
    if len(match) != 1:
        known = ", ".join(sorted(jobs)[-5:]) or "none"
        raise BackfillError(f"{len(match)} backfills match {prefix!r} (namespace "
                            f"{namespace!r}; latest: {known}); see `streamflow backfill list`")
    return match[0]


def parse_time(value: str, flag: str) -> datetime:
    """ISO 8601; a date alone is midnight; no zone means UTC."""
    try:
        t = datetime.fromisoformat(value)
    except ValueError as e:
        raise BackfillError(f"{flag} {value!r} is not an ISO 8601 date or time "
                            "(e.g. 2026-10-01 or 2026-10-01T06:00:00+00:00)") from e
    return t if t.tzinfo is not None else t.replace(tzinfo=UTC)


def target_stages(pipeline: Pipeline, asset: str, stage: str | None) -> tuple[Asset[Any],
                                                                              list[str]]:
    """The asset, and the stages its backfill re-fires (all that read it, or ``stage``)."""
    if asset not in pipeline.assets:
        raise BackfillError(f"pipeline {pipeline.name!r} has no asset {asset!r} (assets: "
                            f"{', '.join(sorted(pipeline.assets))})")
    readers = [st.name for st in pipeline.stages if any(a.name == asset for a in st.inputs)]
    if stage is not None:
        st = next((s for s in pipeline.stages if s.name == stage), None)
        if st is None:
            raise BackfillError(f"pipeline {pipeline.name!r} has no stage {stage!r} (stages: "
                                f"{', '.join(s.name for s in pipeline.stages)})")
        if stage not in readers:
            raise BackfillError(
                f"stage {stage!r} does not read asset {asset!r} (its inputs: "
                f"{', '.join(a.name for a in st.inputs)}); backfill one of those, or leave "
                "--stage out to re-fire every stage that reads the asset")
        readers = [stage]
    if not readers:
        raise BackfillError(f"no stage reads asset {asset!r}, so there is nothing to re-fire; "
                            "backfill an asset a stage reads (its sinks follow downstream)")
    return pipeline.assets[asset], readers


def new_id(asset: str, start: datetime, end: datetime) -> str:
    return "bf-" + stable_id(asset, start.isoformat(), end.isoformat(), time.time_ns())[:10]

