"""The run ledger: what happened to every attempt of every run, on the ``<namespace>.runs`` topic.

The ledger lives on the transport, not in a worker's local file, so every worker of a
namespace writes to it and ``streamflow runs`` reads the same truth wherever it runs.

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
from collections.abc import Iterable, Sequence
from typing import Any

import orjson

from streamflow.model import FINAL, Message, Mode, OutMessage, RunInput, RunRecord, RunStatus

log = logging.getLogger("streamflow.state")

LEDGER_VERSION = 2
"""The newest ledger format this worker reads and writes (see the module docstring)."""

_warned: set[int] = set()


def record_message(topic: str, *, run_id: str, stage: str, partition: str, status: RunStatus,
                   attempt: int, max_attempts: int, started_ms: int, ended_ms: int, mode: Mode,
                   replay: int, inputs: Iterable[RunInput], outputs: list[str],
                   error: dict[str, Any] | None, trace_id: str | None,
                   checks: list[dict[str, Any]] | None = None,
                   kafka_partition: int | None = None, backfill: str = "",
                   output: str | None = None) -> OutMessage:
    """One attempt as a v1 message, keyed by its run id. On the run's input partition number
    when known: a worker taking that partition over reads only that ledger partition."""
    body = {
        "v": 1, "run_id": run_id, "stage": stage, "partition": partition, "status": status,
        "attempt": attempt, "max_attempts": max_attempts, "started_ms": started_ms,
        "ended_ms": ended_ms, "mode": mode, "replay": replay,
        "inputs": [{"asset": i.asset, "partition": i.partition, "version": i.version,
                    "arrival_id": i.arrival_id} for i in inputs],
        "outputs": outputs, "error": error, "trace_id": trace_id, "checks": checks,
        "backfill": backfill or None, "output": output,
    }
    return OutMessage(topic, orjson.dumps(body), run_id.encode(), [], partition=kafka_partition)


class LedgerBatch:
    """The succeeded runs of one handled batch, written as one v2 message per input partition
    when the batch is published (``drain``)."""

    __slots__ = ("_runs", "max_attempts", "output", "stage", "topic")

    def __init__(self, topic: str, stage: str, max_attempts: int, output: str | None) -> None:
        self.topic, self.stage, self.max_attempts, self.output = (
            topic, stage, max_attempts, output)
        self._runs: dict[int, list[dict[str, Any]]] = {}

    def add(self, kafka_partition: int, entry: dict[str, Any]) -> None:
        """``entry`` from ``run_entry``; ``kafka_partition`` -1 when unknown."""
        runs = self._runs.get(kafka_partition)
        if runs is None:
            runs = self._runs[kafka_partition] = []
        runs.append(entry)

    def drain(self) -> list[OutMessage]:
        """The batch's ledger messages; the book is empty afterwards. Each key is unique (the
        topic is compacted: a key shared with another batch would compact its runs away)."""
        out = []
        for n, runs in self._runs.items():
            body = {"v": 2, "stage": self.stage, "max_attempts": self.max_attempts,
                    "output": self.output, "runs": runs}
            key = b"batch-" + os.urandom(8).hex().encode()
            out.append(OutMessage(self.topic, orjson.dumps(body), key, [],
                                  partition=n if n >= 0 else None))
        self._runs = {}
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


def fold_raw(messages: Iterable[Message]) -> dict[str, dict[str, Any]]:
    """Latest record per run id as plain JSON, in log order: a worker reads the whole ledger
    at start, and orjson parses it ten times faster than validating every record (a restarted
    worker's recovery time). Unreadable messages are skipped."""
    runs: dict[str, dict[str, Any]] = {}
    for m in messages:
        try:
            for d in _records(orjson.loads(m.value)):
                runs[d["run_id"]] = d
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
            continue
    return runs


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
    runs: dict[str, RunRecord] = {}
    for rid, d in fold_raw(messages).items():
        try:
            runs[rid] = RunRecord.model_validate(d)
        except ValueError:
            continue
    return runs
