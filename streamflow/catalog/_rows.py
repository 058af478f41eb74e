"""Control-topic messages as catalog rows, each with the version that orders it.

The formats are read by the folds that own them (``fold_raw`` for the ledger, the contract
registry's fold, ``BackfillJob`` for jobs); this module only lays their results out as rows.

Every row carries ``ver``, a string compared byte by byte, and an upsert replaces a row only
with a greater one, so two projectors converge and no row ever goes back:

- a run: ``(ended_ms, topic rank, partition, offset)``, zero-padded. Within one ledger
  partition that is log order; across the two ledger topics it is what ``merge`` does (the
  later-ended record, the retained topic's on a tie);
- any other row: ``(partition, offset)`` on its one topic, log order.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Literal

import orjson

from streamflow.backfill import read_job
from streamflow.model import Message, mask_payload
from streamflow.state import fold_contracts, fold_raw

log = logging.getLogger("streamflow.catalog")

Kind = Literal["runs", "dead_letters", "holds", "contracts", "backfills"]
HOLD_VERSION = 1
"""The newest gate-hold format this catalog reads (``"v"``; absent: 1)."""


@dataclass(frozen=True, slots=True)
class Table:
    name: str
    columns: tuple[str, ...]
    key: tuple[str, ...]

    def upsert(self) -> str:
        """Insert, or replace the row only with a greater ``ver``."""
        cols = ", ".join(self.columns)
        sets = ", ".join(f"{c} = excluded.{c}" for c in self.columns if c not in self.key)
        return (f"INSERT INTO {self.name} ({cols}) VALUES ({', '.join('?' * len(self.columns))})"
                f" ON CONFLICT ({', '.join(self.key)}) DO UPDATE SET {sets}"
                f" WHERE excluded.ver > {self.name}.ver")


_SRC = ("ver", "src_topic", "src_partition", "src_offset")
TABLES: dict[str, Table] = {t.name: t for t in (
    Table("runs", ("run_id", "stage", "partition_key", "status", "attempt", "max_attempts",
                   "started_ms", "ended_ms", "mode", "replay", "output", "backfill",
                   "trace_id", "error", "checks", *_SRC), ("run_id",)),
    Table("run_inputs", ("run_id", "pos", "asset", "partition_key", "version", "arrival_id",
                         "ver"), ("run_id", "pos")),
    Table("run_outputs", ("run_id", "pos", "arrival_id", "ver"), ("run_id", "pos")),
    Table("dead_letters", ("id", "kind", "stage", "reason", "arrival_id", "run_id", "attempts",
                           "ts_ms", "payload", "origin", "error", "sensitive", "truncated",
                           *_SRC), ("src_topic", "src_partition", "src_offset")),
    Table("holds", ("stage", "partition_key", "held", "kafka_partition", "since_ms", "held_by",
                    "checks", "parked", "parked_bytes", *_SRC), ("stage", "partition_key")),
    Table("contracts", ("asset", "version", "contract", "fields", "registered_ms", *_SRC),
          ("asset", "version")),
    Table("backfills", ("id", "status", "pipeline", "asset", "target", "stages", "range_start",
                        "range_end", "keys_done", "keys_total", "records_done", "records_total",
                        "created_ms", "updated_ms", "completed_ms", "error", "job", *_SRC),
          ("id",)),
)}
_INDEX = {t.name: (tuple(t.columns.index(k) for k in t.key), t.columns.index("ver"))
          for t in TABLES.values()}
"""Per table: where its key's columns and ``ver`` are in a row."""
WRITE_ORDER = ("runs", "run_inputs", "run_outputs", "dead_letters", "holds", "contracts",
               "backfills")
"""Tables in the order every transaction writes them: two projectors lock rows in one order."""


@dataclass(frozen=True, slots=True)
class Source:
    """One topic the catalog follows, and what its messages are."""

    topic: str
    kind: Kind
    rank: int = 0
    """Runs: the retained ledger topic's record wins a tie of ``ended_ms`` (as ``merge``)."""
    stage: str = ""
    """Holds: the stage whose hold topic this is."""


@dataclass
class Batch:
    """Rows of one transaction, the newest per key, and how far each partition was read."""

    rows: dict[str, dict[tuple[Any, ...], tuple[Any, ...]]] = field(
        default_factory=lambda: {name: {} for name in WRITE_ORDER})
    positions: dict[tuple[str, int], tuple[int, int]] = field(default_factory=dict)
    """(topic, partition) -> (next offset, timestamp of the last message read)."""
    runs: set[str] = field(default_factory=set)
    """Run ids whose inputs and outputs were written: older versions' leftovers go."""
    gated: set[str] = field(default_factory=set)
    """Stages with check results in this batch: gated, so they have a hold topic to follow."""
    messages: int = 0
    added: int = 0
    """Rows added (a v2 ledger message holds hundreds of runs, each several rows)."""

    def add(self, table: str, row: tuple[Any, ...]) -> None:
        keys, at = _INDEX[table]
        key = tuple(row[i] for i in keys)
        old = self.rows[table].get(key)
        if old is None:
            self.added += 1
        if old is None or row[at] > old[at]:
            self.rows[table][key] = row

    def read(self, m: Message) -> None:
        self.messages += 1
        where = (m.topic, m.partition)
        nxt, ts = self.positions.get(where, (0, 0))
        self.positions[where] = (max(nxt, m.offset + 1), max(ts, m.timestamp_ms or 0))

    def __len__(self) -> int:
        """The messages read into it."""
        return self.messages

    @property
    def size(self) -> int:
        """What a transaction is sized by: its rows, or its messages if more (tombstones and
        skipped messages add no row)."""
        return max(self.messages, self.added)


def _json(v: Any) -> str | None:
    return None if v is None else orjson.dumps(v, default=str).decode()


def _text(v: Any) -> str:
    """Text from a message as a column takes it (PostgreSQL's text holds no NUL)."""
    return str(v).replace("\x00", "\ufffd")


def _opt(v: Any) -> str | None:
    return None if v is None else _text(v)


def _int(v: Any) -> int:
    """An integer a BIGINT column takes; ValueError otherwise (the record is skipped, where
    PostgreSQL would refuse the whole batch again and again)."""
    n = int(v)
    if not -(2**63) <= n < 2**63:
        raise ValueError(f"{n} does not fit in 64 bits")
    return n


def _ver(m: Message) -> str:
    return f"{m.partition:06d}{m.offset:019d}"


def add_messages(source: Source, messages: list[Message], batch: Batch) -> None:
    """Fold ``messages`` of ``source`` into ``batch``."""
    for m in messages:
        add_message(source, m, batch)


def add_message(source: Source, m: Message, batch: Batch) -> None:
    """Fold one message; an unreadable one only moves the position (the folds skip it, and
    warn about a newer format)."""
    batch.read(m)
    if m.value:
        _PROJECT[source.kind](source, m, batch)
    elif source.kind == "holds" and m.key:
        batch.add("holds", (source.stage, _text(m.key.decode(errors="replace")), 0, None, None,
                            None, None, 0, 0, _ver(m), m.topic, m.partition, m.offset))
    # Other tombstones keep their rows: the catalog is the history (a run's tombstone on the
    # compacted ledger topic comes with its settled record on the retained one).


def _runs(source: Source, m: Message, batch: Batch) -> None:
    for rid, r in fold_raw([m]).items():
        try:
            _run(source, m, rid, r, batch)
        except (KeyError, TypeError, ValueError) as e:  # a foreign or damaged record
            log.warning("catalog: skipping run record %r at %s:%d:%d (%s: %s)", rid[:64],
                        m.topic, m.partition, m.offset, type(e).__name__, e)


def _run(source: Source, m: Message, rid: str, r: dict[str, Any], batch: Batch) -> None:
    """One run's rows, all built before any is added: a damaged record adds none."""
    ended = max(0, _int(r.get("ended_ms") or 0))
    ver = f"{ended:019d}{source.rank}{_ver(m)}"
    run = (rid, _text(r["stage"]), _text(r["partition"]), _text(r["status"]),
           _int(r["attempt"]), _int(r["max_attempts"]), _int(r.get("started_ms") or 0), ended,
           _text(r.get("mode") or "live"), _int(r.get("replay") or 0), _opt(r.get("output")),
           _opt(r.get("backfill") or None), _opt(r.get("trace_id")), _json(r.get("error")),
           _json(r.get("checks")), ver, m.topic, m.partition, m.offset)
    ins = [(rid, pos, _text(i["asset"]), _text(i["partition"]), _int(i["version"]),
            _text(i["arrival_id"]), ver) for pos, i in enumerate(r.get("inputs") or ())]
    outs = [(rid, pos, _text(o), ver) for pos, o in enumerate(r.get("outputs") or ())]
    batch.add("runs", run)
    for i_row in ins:
        batch.add("run_inputs", i_row)
    for o_row in outs:
        batch.add("run_outputs", o_row)
    batch.runs.add(rid)
    if r.get("checks") is not None:
        batch.gated.add(run[1])


def _dead_letter(source: Source, m: Message, batch: Batch) -> None:
    try:
        d = orjson.loads(m.value)
    except orjson.JSONDecodeError:
        d = {"reason": "unreadable dead letter", "payload": m.value.decode("latin-1")}
    if not isinstance(d, dict):
        return
    payload, names = _text(d.get("payload", "")), d.get("sensitive")
    if names:  # the catalog is read by people: masked as `dlq show` masks without --reveal
        payload = mask_payload(payload, [str(n) for n in names])
    attempts = d.get("attempts")
    batch.add("dead_letters", (
        f"{m.partition}:{m.offset}", _text(d.get("kind", "stage")), _text(d.get("stage", "")),
        _text(d.get("reason", "")), _opt(d.get("arrival_id")), _opt(d.get("run_id")),
        attempts if isinstance(attempts, int) and -(2**63) <= attempts < 2**63 else None,
        int(m.timestamp_ms or 0), payload,
        _json(d.get("origin")), _json(d.get("error")), _json(names), _json(d.get("truncated")),
        _ver(m), m.topic, m.partition, m.offset))


def _hold(source: Source, m: Message, batch: Batch) -> None:
    try:
        d = orjson.loads(m.value)
        if d.get("v", 1) > HOLD_VERSION:
            log.warning("catalog: skipping a gate hold of format v%s on %s (upgrade "
                        "StreamFlow to read it)", d.get("v"), m.topic)
            return
        key = _text(m.key.decode(errors="replace") if m.key else d["partition"])
        row = (source.stage, key, 1, _int(d["kafka_partition"]), _int(d["since_ms"]),
               _json(d.get("held_by", {})), _json(d.get("checks", [])),
               len(d.get("parked", ())), _int(d.get("parked_bytes", 0)))
    except (orjson.JSONDecodeError, AttributeError, KeyError, TypeError, ValueError):
        return
    batch.add("holds", (*row, _ver(m), m.topic, m.partition, m.offset))


def _contract(source: Source, m: Message, batch: Batch) -> None:
    for asset, versions in fold_contracts([m]).items():
        for version, rec in versions.items():
            at = rec.get("registered_ms")
            if not -(2**63) <= version < 2**63:
                continue
            batch.add("contracts", (
                _text(asset), version, _opt(rec.get("contract")),
                _json(rec.get("fields", {})) or "{}", at if isinstance(at, int) else None,
                _ver(m), m.topic, m.partition, m.offset))


def _backfill(source: Source, m: Message, batch: Batch) -> None:
    job = read_job(m.value)
    if job is None or not all(-(2**63) <= n < 2**63 for n in (
            job.keys_total, job.records_total, job.updated_ms, job.created_ms)):
        return
    batch.add("backfills", (
        job.id, job.status, job.pipeline, job.asset, job.target, _json(job.stages) or "[]",
        job.start.isoformat(), job.end.isoformat(), job.keys_done, job.keys_total,
        job.records_done, job.records_total, job.created_ms, job.updated_ms, job.completed_ms,
        job.error, job.model_dump_json(), _ver(m), m.topic, m.partition, m.offset))


_PROJECT = {"runs": _runs, "dead_letters": _dead_letter, "holds": _hold,
            "contracts": _contract, "backfills": _backfill}
