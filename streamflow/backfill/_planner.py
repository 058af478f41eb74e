"""What a backfill replays: an asset's history for a range, rebuilt as backfill arrivals and
cut into slices, leaving out (with ``--reprocess none``) what the run ledger says already ran.

The ledger keeps settled runs for ``ledger_retention_s`` only, so for an input older than that
with no entry the planner cannot tell "never ran" from "ran and was forgotten": it is sent (a
keyed sink absorbs a second run) and counted, and the CLI warns with that count.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from opentelemetry.trace import SpanKind

from streamflow.connectors import BackfillSource, SourceBatch, TimeRange, build_source
from streamflow.model import (
    FINAL,
    H_BACKFILL_STAGES,
    Arrival,
    Asset,
    DeadLetter,
    OnEach,
    OutMessage,
    Pipeline,
    Redaction,
    check_record,
    dead_letter_message,
    lane_topic,
    origin_text,
    record_text,
    reject_id,
    run_id_of,
    runs_topic,
    sensitive_names,
    source_arrival,
    source_arrival_id,
)
from streamflow.observability import Tracing, traceparent_of
from streamflow.state import close_runs, read_ledger
from streamflow.transports import Transport

from ._jobs import MAX_SLICES, BackfillJob, Slice, target_stages


@dataclass
class Plan:
    """What a backfill replays: lane messages per slice, and what was left out and why."""

    via: str
    slices: list[Slice]
    messages: list[list[OutMessage]]
    dead: list[OutMessage] = field(default_factory=list)
    out_of_range: int = 0
    unruled: int = 0
    """Inputs sent though they may have run: older than the ledger's retention, no entry."""
    settle: list[OutMessage] = field(default_factory=list)
    """``--reprocess failed``: the dead-lettered runs it re-runs under new ids, resolved."""


class Planner:
    """Reads an asset's history for a range and turns it into backfill arrivals."""

    def __init__(self, pipeline: Pipeline, transport: Transport, namespace: str,
                 dlq_topic: str, tracing: Tracing, retention_s: float | None = None) -> None:
        self.p, self.t, self.ns, self.dlq, self.tr = pipeline, transport, namespace, dlq_topic, \
            tracing
        self.forgotten_ms = 0 if retention_s is None else int((time.time() - retention_s) * 1000)
        """Settled runs that ended before then have left the ledger."""
        self.unruled = 0  # per plan: see Plan.unruled
        self.rerun: list[str] = []  # dead-lettered run ids ``--reprocess failed`` sends again

    async def plan(self, job: BackfillJob) -> Plan:
        self.unruled, self.rerun = 0, []
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
        ledger = await read_ledger(self.t, runs_topic(self.ns))
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
        settle = await close_runs(self.t, runs_topic(self.ns), self.rerun)
        return Plan(via, slices, messages, dead, skipped_range, self.unruled, settle)

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
                dead.append(self._dead(job, asset, reason, rec.origin, record_text(rec.data),
                                       arrival_id, dead))
                continue
            t = asset.event_time_ms(model) if asset.event_time is not None else start_ms
            if not start_ms <= t < end_ms:
                late += 1
                continue
            out.append(source_arrival(asset, arrival_id, model, source, "backfill",
                                      key=asset.key_bytes(model), event_time_ms=t))
        for rej in batch.rejects:
            reason = f"backfill {job.id}, source {source}: {rej.reason}"
            dead.append(self._dead(job, asset, reason, rej.origin, rej.payload,
                                   reject_id(asset, rej.origin), dead))
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
        ids = [run_id_of(s, _plain(a)) for s in each]
        statuses = [ledger.get(r, {}).get("status") for r in ids]
        if job.reprocess == "failed":
            dead = [r for r, st in zip(ids, statuses, strict=True) if st == "dead-lettered"]
            self.rerun += dead
            return bool(dead)
        if all(st is None for st in statuses) and a.event_time_ms < self.forgotten_ms:
            self.unruled += 1
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

    def _dead(self, job: BackfillJob, asset: Asset[Any], reason: str, origin: dict[str, Any],
              payload: str, arrival_id: str, spill: list[OutMessage]) -> OutMessage:
        secret = Redaction()
        secret.add(asset.contract, payload)
        dl = DeadLetter(secret.text(reason), f"backfill {job.id}", origin, payload,
                        arrival_id=arrival_id, kind="source",
                        sensitive=sensitive_names(asset.contract))
        return dead_letter_message(self.dlq, dl, None, spill)


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
