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
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

import orjson
from opentelemetry.trace import SpanKind
from pydantic import BaseModel, ValidationError

from streamflow.connectors import BackfillSource, SourceBatch, TimeRange, build_source
from streamflow.errors import BackfillError
from streamflow.model import (
    FINAL,
    H_BACKFILL_STAGES,
    Arrival,
    Asset,
    DeadLetter,
    OnEach,
    OutMessage,
    Pipeline,
    check_record,
    dead_letter_message,
    jobs_topic,
    lane_topic,
    origin_text,
    reject_id,
    run_id_of,
    runs_topic,
    source_arrival,
    source_arrival_id,
    stable_id,
)
from streamflow.observability import Tracing, traceparent_of
from streamflow.state import fold_raw
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


async def load_jobs(transport: Transport, namespace: str) -> dict[str, BackfillJob]:
    jobs: dict[str, BackfillJob] = {}
    for m in await transport.read_topic(jobs_topic(namespace)):
        try:
            job = BackfillJob.model_validate_json(m.value)
        except ValidationError:
            continue
        if job.v > JOB_VERSION:
            log.warning("backfill job %s is of format v%d, newer than this StreamFlow's v%d; "
                        "skipped (upgrade to manage it)", job.id, job.v, JOB_VERSION)
            continue
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


@dataclass
class Plan:
    """What a backfill replays: lane messages per slice, and what was left out and why."""

    via: str
    slices: list[Slice]
    messages: list[list[OutMessage]]
    dead: list[OutMessage] = field(default_factory=list)
    out_of_range: int = 0


class Planner:
    """Reads an asset's history for a range and turns it into backfill arrivals."""

    def __init__(self, pipeline: Pipeline, transport: Transport, namespace: str,
                 dlq_topic: str, tracing: Tracing) -> None:
        self.p, self.t, self.ns, self.dlq, self.tr = pipeline, transport, namespace, dlq_topic, \
            tracing

    async def plan(self, job: BackfillJob) -> Plan:
        asset, stages = target_stages(self.p, job.asset, job.stages[0]
                                      if len(job.stages) == 1 else None)
        window = TimeRange(job.start, job.end)
        source = self._history_source(asset)
        arrivals: list[Arrival] = []
        dead: list[OutMessage] = []
        skipped_range = 0
        if source is not None:
            name, src = source
            via = f"source {name}"
            async for batch in src.backfill(window):
                got, bad, late = self._from_batch(job, asset, name, batch, window)
                arrivals += got
                dead += bad
                skipped_range += late
        else:
            via = f"topic {asset.topic(self.ns)}"
            arrivals, skipped_range = await self._from_topic(job, asset, window)
        if job.partitions is not None:
            wanted = set(job.partitions)
            arrivals = [a for a in arrivals if a.partition in wanted]
        # One arrival per id (the log may hold one twice after a redelivery), by partition.
        by_key: dict[str, dict[str, Arrival]] = {}
        for a in arrivals:
            by_key.setdefault(a.partition, {})[a.arrival_id] = a
        ledger = fold_raw(await self.t.read_topic(runs_topic(self.ns)))
        each = [st.name for st in self.p.stages
                if st.name in stages and isinstance(st.trigger, OnEach)]
        lane = lane_topic(self.ns, asset.name)
        groups: list[tuple[list[str], list[OutMessage], int, int]] = []
        for key in sorted(by_key):
            msgs: list[OutMessage] = []
            skipped = 0
            for a in by_key[key].values():
                if not self._wanted(job, a, each, ledger):
                    skipped += 1
                    continue
                msgs.append(self._lane_message(job, asset, a, lane))
            groups.append(([key], msgs, len(by_key[key]), skipped))
        slices, messages = _slices(groups)
        return Plan(via, slices, messages, dead, skipped_range)

    def _history_source(self, asset: Asset[Any]) -> tuple[str, BackfillSource] | None:
        for sp in self.p.sources:
            if sp.asset.name != asset.name:
                continue
            src = build_source(sp.connector, sp.config) if isinstance(sp.connector, str) \
                else sp.connector
            if isinstance(src, BackfillSource):
                return sp.name, src
        return None

    def _from_batch(self, job: BackfillJob, asset: Asset[Any], source: str, batch: SourceBatch,
                    window: TimeRange) -> tuple[list[Arrival], list[OutMessage], int]:
        start_ms, end_ms = _ms(window.start), _ms(window.end)
        out: list[Arrival] = []
        dead: list[OutMessage] = []
        late = 0
        for rec in batch.records:
            arrival_id = source_arrival_id(asset, rec)
            model = check_record(asset, rec)
            if isinstance(model, str):
                reason = f"backfill {job.id}, source {source} ({origin_text(rec.origin)}): {model}"
                dead.append(self._dead(job, reason, rec.origin, orjson.dumps(rec.data).decode(),
                                       arrival_id))
                continue
            t = asset.event_time_ms(model) if asset.event_time is not None else start_ms
            if not start_ms <= t < end_ms:
                late += 1
                continue
            out.append(source_arrival(asset, arrival_id, model, source, "backfill",
                                      key=asset.key_bytes(model), event_time_ms=t))
        for rej in batch.rejects:
            reason = f"backfill {job.id}, source {source}: {rej.reason}"
            dead.append(self._dead(job, reason, rej.origin, rej.payload,
                                   reject_id(asset, rej.origin)))
        return out, dead, late

    async def _from_topic(self, job: BackfillJob, asset: Asset[Any],
                          window: TimeRange) -> tuple[list[Arrival], int]:
        """No source can read history: the asset's own log is the history."""
        start_ms, end_ms = _ms(window.start), _ms(window.end)
        out: list[Arrival] = []
        late = 0
        for m in await self.t.read_topic(asset.topic(self.ns)):
            a = Arrival.from_message(m.key, m.value, m.headers)
            t = a.event_time_ms or m.timestamp_ms
            if not start_ms <= t < end_ms:
                late += 1
                continue
            out.append(a)
        return out, late

    def _wanted(self, job: BackfillJob, a: Arrival, each: Sequence[str],
                ledger: dict[str, dict[str, Any]]) -> bool:
        """The ledger decides: ``none`` leaves out what every target stage already ran,
        ``failed`` sends only what one of them dead-lettered, ``all`` sends everything. A
        barrier stage's run id depends on its other inputs, so its arrivals always go (its
        barrier ignores a version it already holds)."""
        if job.reprocess == "all" or len(each) < len(job.stages):
            return True
        statuses = [ledger.get(run_id_of(s, _plain(a)), {}).get("status") for s in each]
        if job.reprocess == "failed":
            return any(st == "dead-lettered" for st in statuses)
        return not all(st in FINAL for st in statuses)

    def _lane_message(self, job: BackfillJob, asset: Asset[Any], a: Arrival,
                      lane: str) -> OutMessage:
        tr = self.tr
        root, root_tp = tr.start_root(f"backfill {asset.name}", {
            "streamflow.mode": "backfill", "streamflow.backfill_id": job.id,
            "streamflow.asset": asset.name, "streamflow.partition": a.partition})
        send = tr.start_child(f"send {lane}", root, SpanKind.PRODUCER,
                              tr.send_attributes(lane, a.key))
        b = Arrival(a.arrival_id, a.asset or asset.name, a.partition, a.version,
                    a.event_time_ms, a.run, "backfill", a.key, a.value,
                    traceparent_of(send, root_tp), 0, job.id,
                    job.id if job.reprocess != "none" else "")
        for s in (send, root):
            if s is not None:
                s.end()
        msg = b.message(lane)
        msg.headers.append((H_BACKFILL_STAGES, ",".join(job.stages).encode()))
        return msg

    def _dead(self, job: BackfillJob, reason: str, origin: dict[str, Any], payload: str,
              arrival_id: str) -> OutMessage:
        dl = DeadLetter(reason, f"backfill {job.id}", origin, payload, arrival_id=arrival_id,
                        kind="source")
        return dead_letter_message(self.dlq, dl, None)


def _plain(a: Arrival) -> Arrival:
    """The arrival as live data carried it: the run id live work would have given it."""
    return Arrival(a.arrival_id, a.asset, a.partition, a.version, a.event_time_ms, a.run,
                   "live", a.key, a.value)


def _slices(groups: list[tuple[list[str], list[OutMessage], int, int]]
            ) -> tuple[list[Slice], list[list[OutMessage]]]:
    """At most ``MAX_SLICES`` slices of consecutive keys, each about as large."""
    per = max(1, -(-len(groups) // MAX_SLICES))
    slices: list[Slice] = []
    messages: list[list[OutMessage]] = []
    for i in range(0, len(groups), per):
        chunk = groups[i:i + per]
        slices.append(Slice(first=chunk[0][0][0], last=chunk[-1][0][0], keys=len(chunk),
                            records=sum(len(g[1]) for g in chunk),
                            skipped=sum(g[3] for g in chunk)))
        messages.append([m for g in chunk for m in g[1]])
    return slices, messages


def _ms(t: datetime) -> int:
    return int(t.timestamp() * 1000)


def new_id(asset: str, start: datetime, end: datetime) -> str:
    return "bf-" + stable_id(asset, start.isoformat(), end.isoformat(), time.time_ns())[:10]

