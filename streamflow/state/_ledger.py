"""The run ledger: what happened to every attempt of every run, on two topics.

The ledger lives on the transport, not in a worker's local file, so every worker of a
namespace writes to it and ``streamflow runs`` reads the same truth wherever it runs.

- ``<namespace>.runs``, compacted by run id, holds runs that may still need someone
  (retrying, dead-lettered, held, parked) until they are resolved: the resolving record
  tombstones the run's key there.
- ``<namespace>.runs.done`` holds runs that need nothing more (succeeded, skipped, released)
  and deletes them after ``ledger_retention_s``, so the ledger stops growing with traffic; a
  start-up reads only its dedupe window of it.

Two formats share the topic, told apart by the value's ``"v"`` (absent means 1):

- **v1, one message per attempt,** keyed by run id. Rare outcomes (retrying, dead-lettered,
  held, parked, released, skipped) are written so, and every worker before v2 wrote all so.
- **v2, one message per handled batch and input partition,** holding the succeeded runs of
  that batch as compact entries. A message per run cost a produce, its partitioning and a
  JSON document each; an entry costs a small dict in one document.

Reading folds both, in log order, into the latest v1-shaped record per run id; a format newer
than this worker's is skipped with a warning naming it, never misread.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Iterable, Sequence
from typing import Any

import orjson

from streamflow.model import FINAL, Message, Mode, OutMessage, RunInput, RunRecord, RunStatus
from streamflow.transports import Transport

log = logging.getLogger("streamflow.state")

LEDGER_VERSION = 2
"""The newest ledger format this worker reads and writes (see the module docstring)."""

SETTLED: frozenset[str] = frozenset({"succeeded", "skipped", "released"})
"""Statuses that need nothing more: written to the retained topic, not the compacted one."""
HISTORY = 64
"""Passing runs a gated stage's row-count checks look back on (``Gatekeeper.history``)."""

_warned: set[int] = set()


def done_of(topic: str) -> str:
    """The retained topic beside a ledger topic (``done_runs_topic`` of its namespace)."""
    return topic + ".done"


def settled_message(topic: str, run_id: str, kafka_partition: int = -1) -> OutMessage:
    """A tombstone for a run's record on the compacted topic: it was retried, replayed,
    unparked or released, and its settled record now lives on the retained topic."""
    return OutMessage(topic, b"", run_id.encode(), [],
                      partition=kafka_partition if kafka_partition >= 0 else None)


def record_message(topic: str, *, run_id: str, stage: str, partition: str, status: RunStatus,
                   attempt: int, max_attempts: int, started_ms: int, ended_ms: int, mode: Mode,
                   replay: int, inputs: Iterable[RunInput], outputs: list[str],
                   error: dict[str, Any] | None, trace_id: str | None,
                   checks: list[dict[str, Any]] | None = None,
                   kafka_partition: int | None = None, backfill: str = "",
                   output: str | None = None) -> OutMessage:
    """One attempt as a v1 message, keyed by its run id, on ``topic`` or, settled, on its
    retained topic. On the run's input partition number when known: a worker taking that
    partition over reads only that ledger partition."""
    body = {
        "v": 1, "run_id": run_id, "stage": stage, "partition": partition, "status": status,
        "attempt": attempt, "max_attempts": max_attempts, "started_ms": started_ms,
        "ended_ms": ended_ms, "mode": mode, "replay": replay,
        "inputs": [{"asset": i.asset, "partition": i.partition, "version": i.version,
                    "arrival_id": i.arrival_id} for i in inputs],
        "outputs": outputs, "error": error, "trace_id": trace_id, "checks": checks,
        "backfill": backfill or None, "output": output,
    }
    where = done_of(topic) if status in SETTLED else topic
    return OutMessage(where, orjson.dumps(body), run_id.encode(), [], partition=kafka_partition)


class LedgerBatch:
    """The succeeded runs of one handled batch, written as one v2 message per input partition
    on the retained topic when the batch is published (``drain``)."""

    __slots__ = ("_runs", "_settles", "done", "max_attempts", "output", "stage", "topic")

    def __init__(self, topic: str, stage: str, max_attempts: int, output: str | None) -> None:
        self.topic, self.stage, self.max_attempts, self.output = (
            topic, stage, max_attempts, output)
        self.done = done_of(topic)
        self._runs: dict[int, list[dict[str, Any]]] = {}
        self._settles: list[OutMessage] = []

    def add(self, kafka_partition: int, entry: dict[str, Any],
            settle_at: int | None = None) -> None:
        """``entry`` from ``run_entry``; ``kafka_partition`` -1 when unknown. ``settle_at``:
        the partition of the run's record on the compacted topic (a retried, replayed or
        unparked run), which goes."""
        runs = self._runs.get(kafka_partition)
        if runs is None:
            runs = self._runs[kafka_partition] = []
        runs.append(entry)
        if settle_at is not None:
            self._settles.append(settled_message(self.topic, entry["run_id"], settle_at))

    def drain(self) -> list[OutMessage]:
        """The batch's ledger messages; the book is empty afterwards. Each key is unique (the
        older ledger compacted them: a shared key would have compacted runs away)."""
        out = self._settles
        for n, runs in self._runs.items():
            body = {"v": 2, "stage": self.stage, "max_attempts": self.max_attempts,
                    "output": self.output, "runs": runs}
            key = b"batch-" + os.urandom(8).hex().encode()
            out.append(OutMessage(self.done, orjson.dumps(body), key, [],
                                  partition=n if n >= 0 else None))
        self._runs, self._settles = {}, []
        return out


def compact_inputs(inputs: Sequence[RunInput]) -> list[list[Any]]:
    """Run inputs as v2 writes them: ``[asset, partition, version, arrival_id]``."""
    return [[i.asset, i.partition, i.version, i.arrival_id] for i in inputs]


def run_entry(run_id: str, partition: str, attempt: int, started_ms: int, ended_ms: int,
              inputs: list[list[Any]], outputs: list[str], *, mode: Mode = "live",
              replay: int = 0, trace_id: str | None = None, backfill: str = "",
              checks: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """A succeeded run as a v2 entry (inputs from ``compact_inputs``), defaults left out."""
    e: dict[str, Any] = {
        "run_id": run_id, "partition": partition, "attempt": attempt,
        "started_ms": started_ms, "ended_ms": ended_ms,
        "inputs": inputs, "outputs": outputs,
    }
    if mode != "live":
        e["mode"] = mode
    if replay:
        e["replay"] = replay
    if trace_id is not None:
        e["trace_id"] = trace_id
    if backfill:
        e["backfill"] = backfill
    if checks is not None:
        e["checks"] = checks
    return e


def _expand(batch: dict[str, Any], e: dict[str, Any]) -> dict[str, Any]:
    """A v2 entry as the v1 record every reader knows."""
    return {
        "v": 2, "run_id": e["run_id"], "stage": batch["stage"], "partition": e["partition"],
        "status": e.get("status", "succeeded"), "attempt": e["attempt"],
        "max_attempts": batch["max_attempts"], "started_ms": e["started_ms"],
        "ended_ms": e["ended_ms"], "mode": e.get("mode", "live"), "replay": e.get("replay", 0),
        "inputs": [{"asset": a, "partition": p, "version": v, "arrival_id": i}
                   for a, p, v, i in e["inputs"]],
        "outputs": e.get("outputs", []), "error": e.get("error"),
        "trace_id": e.get("trace_id"), "checks": e.get("checks"),
        "backfill": e.get("backfill"), "output": batch.get("output"),
    }


def _records(d: Any) -> Iterable[dict[str, Any]]:
    """The v1-shaped records in one ledger message's JSON."""
    if not isinstance(d, dict):
        return ()
    v = d.get("v", 1)
    if v == 1:
        return (d,)
    if v == 2:
        return (_expand(d, e) for e in d["runs"])
    if v not in _warned:
        _warned.add(v)
        log.warning("run ledger: skipping records of format v%s, newer than this worker's "
                    "v%d; upgrade StreamFlow to read them", v, LEDGER_VERSION)
    return ()


def fold_raw(messages: Iterable[Message], runs: dict[str, dict[str, Any]] | None = None,
             brief: bool = False) -> dict[str, dict[str, Any]]:
    """Latest record per run id as plain JSON, in log order (into ``runs``, to fold a topic
    chunk by chunk): a worker reads the ledger at start, and orjson parses it ten times faster
    than validating every record (a restarted worker's recovery time). A tombstone drops its
    run; unreadable messages are skipped. ``brief``: only what a start needs of a settled run
    (``BRIEF``), a tenth of the memory of the whole record."""
    runs = {} if runs is None else runs
    for m in messages:
        if not m.value:
            if m.key:
                runs.pop(m.key.decode(errors="replace"), None)
            continue
        try:
            d = orjson.loads(m.value)
            if brief:
                runs.update(_briefs(d))
            else:
                for r in _records(d):
                    runs[r["run_id"]] = r
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
            continue
    return runs


BRIEF = ("stage", "status", "ended_ms", "n_inputs")
"""What a brief record keeps: the dedupe window's and the row-count history's needs."""


def _briefs(d: Any) -> Iterable[tuple[str, dict[str, Any]]]:
    if isinstance(d, dict) and d.get("v", 1) == 2:  # a batch: no v1 record built
        stage = sys.intern(d["stage"])
        return ((e["run_id"], {"stage": stage, "status": sys.intern(e.get("status", "succeeded")),
                               "ended_ms": int(e["ended_ms"]), "n_inputs": len(e["inputs"])})
                for e in d["runs"])
    return ((r["run_id"], {"stage": sys.intern(r["stage"]), "status": sys.intern(r["status"]),
                           "ended_ms": int(r.get("ended_ms") or 0),
                           "n_inputs": input_count(r)}) for r in _records(d))


def input_count(d: dict[str, Any]) -> int:
    """A run's number of inputs, of a whole record or a brief one."""
    n = d.get("n_inputs")
    return int(n) if n is not None else len(d.get("inputs") or ())


def merge(open_runs: dict[str, dict[str, Any]],
          done: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Both topics' folds as one: the two logs have no common order, so a run on both (its
    tombstone not written, or not compacted yet) is its later-ended record."""
    runs = dict(open_runs)
    for rid, d in done.items():
        o = runs.get(rid)
        if o is None or int(d.get("ended_ms") or 0) >= int(o.get("ended_ms") or 0):
            runs[rid] = d
    return runs


async def fold_topic(transport: Transport, topic: str, partitions: set[int] | None = None,
                     since_ms: int | None = None, stale_before: int | None = None,
                     where: dict[str, int] | None = None, brief: bool = False,
                     ) -> tuple[dict[str, dict[str, Any]], list[OutMessage]]:
    """One ledger topic folded chunk by chunk, and (``stale_before``) its ``stale_batches``.
    ``where`` gets the partition of each run whose own latest record there is open (where
    its tombstone must go). ``brief``: as ``fold_raw``'s."""
    runs: dict[str, dict[str, Any]] = {}
    stale: list[OutMessage] = []
    async for chunk in transport.scan_topic(topic, partitions, since_ms):
        fold_raw(chunk, runs, brief)
        if stale_before is not None:
            stale += stale_batches(chunk, stale_before)
        if where is not None:
            _open_keys(chunk, where)
    return runs, stale


def _open_keys(chunk: list[Message], where: dict[str, int]) -> None:
    for m in chunk:
        if not m.key or m.key.startswith(b"batch-"):
            continue
        key = m.key.decode(errors="replace")
        try:
            status = orjson.loads(m.value).get("status") if m.value else None
        except (orjson.JSONDecodeError, AttributeError):
            continue
        if status is None or status in SETTLED:
            where.pop(key, None)
        else:
            where[key] = m.partition


async def read_ledger(transport: Transport, runs_topic: str,
                      partitions: set[int] | None = None, since_ms: int | None = None,
                      where: dict[str, int] | None = None,
                      brief: bool = False) -> dict[str, dict[str, Any]]:
    """The ledger as ``fold_raw`` gives it: the compacted topic whole and the retained one
    since ``since_ms`` (everything it still holds when None). ``where``: as ``fold_topic``'s,
    for the compacted topic. ``brief``: settled runs brief (``BRIEF``)."""
    open_runs, _ = await fold_topic(transport, runs_topic, partitions, where=where)
    done, _ = await fold_topic(transport, done_of(runs_topic), partitions, since_ms,
                               brief=brief)
    return merge(open_runs, done)


async def ensure_ledger(transport: Transport, runs_topic: str,
                        retention_s: float) -> None:
    """Both ledger topics, the retained one with the compacted one's partition count: a
    record's partition is its input's, on either topic."""
    done = done_of(runs_topic)
    await transport.ensure_topics([], compacted=[runs_topic])
    await transport.ensure_topics(
        [], retained={done: retention_s},
        partitions={done: await transport.partition_count(runs_topic)})


async def close_runs(transport: Transport, runs_topic: str,
                     run_ids: Iterable[str]) -> list[OutMessage]:
    """Dead-lettered runs being replayed under new run ids: each record moves to the retained
    topic (still listed until retention) and its key on the compacted one is tombstoned, on
    the partition its record is on."""
    want, latest = set(run_ids), {}
    async for chunk in transport.scan_topic(runs_topic):
        for m in chunk:
            key = (m.key or b"").decode(errors="replace")
            if key in want:
                latest[key] = m
    out = []
    for m in latest.values():
        try:
            dead = m.value and orjson.loads(m.value).get("status") == "dead-lettered"
        except (orjson.JSONDecodeError, AttributeError):
            continue
        if dead:
            out += [OutMessage(done_of(runs_topic), m.value, m.key, [], partition=m.partition),
                    OutMessage(runs_topic, b"", m.key, [], partition=m.partition)]
    return out


def stale_batches(messages: Iterable[Message], cutoff_ms: int) -> list[OutMessage]:
    """Tombstones for the succeeded-run batches an older worker wrote to the compacted topic
    and that ended before ``cutoff_ms``: retention applies to them too."""
    out = []
    for m in messages:
        if not m.value or not m.key or not m.key.startswith(b"batch-"):
            continue
        try:
            d = orjson.loads(m.value)
            ended = max(int(e["ended_ms"]) for e in d["runs"])
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
            continue
        if ended < cutoff_ms:
            out.append(OutMessage(m.topic, b"", m.key, [], partition=m.partition))
    return out


def fired_of(runs: dict[str, dict[str, Any]], stage: str, since_ms: int = 0,
             limit: int | None = None) -> list[str]:
    """Runs of ``stage`` that reached a final status, oldest first: redelivered inputs skip
    them. ``since_ms``/``limit``: only those that ended since then, and the newest ``limit``
    (what a bounded dedupe window keeps)."""
    done = sorted((int(d.get("ended_ms") or 0), rid) for rid, d in runs.items()
                  if d.get("stage") == stage and d.get("status") in FINAL
                  and int(d.get("ended_ms") or 0) >= since_ms)
    return [rid for _, rid in (done if limit is None else done[-limit:])]


def fold(messages: Iterable[Message]) -> dict[str, RunRecord]:
    """Latest record per run id, in log order, validated; unreadable records are skipped."""
    return validated(fold_raw(messages))


def validated(raw: dict[str, dict[str, Any]]) -> dict[str, RunRecord]:
    """``fold_raw``'s (or ``read_ledger``'s) records as models; unreadable ones are skipped."""
    runs: dict[str, RunRecord] = {}
    for rid, d in raw.items():
        try:
            runs[rid] = RunRecord.model_validate(d)
        except ValueError:
            continue
    return runs
