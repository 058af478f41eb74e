"""The catalog's schema as numbered migrations, applied in order at start.

Each step is recorded in ``schema_version`` in the same transaction as its statements, so a
start that dies half-way applies the step again, whole, next time. A step is never edited once
released: a change of schema is a new step. The same statements serve SQLite and PostgreSQL;
integers are BIGINT (a record's numbers are 64-bit; PostgreSQL's INTEGER is 32). ``{ver}`` is
the one type that differs (a version string compared byte by byte, which PostgreSQL's
default collation does not promise).
"""

from __future__ import annotations

from dataclasses import dataclass

SOURCE = "src_topic TEXT NOT NULL, src_partition INTEGER NOT NULL, src_offset BIGINT NOT NULL"
"""Where every row came from, written in the transaction that moves ``positions`` past it."""


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    name: str
    statements: tuple[str, ...]


MIGRATIONS: tuple[Migration, ...] = (
    Migration(1, "positions, runs, run inputs and outputs, dead letters, holds, contracts, "
                 "backfills", (
        "CREATE TABLE positions (topic TEXT NOT NULL, kafka_partition BIGINT NOT NULL, "
        "next_offset BIGINT NOT NULL, end_offset BIGINT NOT NULL, last_ts_ms BIGINT NOT NULL, "
        "caught_up_ms BIGINT NOT NULL, updated_ms BIGINT NOT NULL, "
        "PRIMARY KEY (topic, kafka_partition))",
        "CREATE TABLE runs (run_id TEXT PRIMARY KEY, stage TEXT NOT NULL, "
        "partition_key TEXT NOT NULL, status TEXT NOT NULL, attempt BIGINT NOT NULL, "
        "max_attempts BIGINT NOT NULL, started_ms BIGINT NOT NULL, ended_ms BIGINT NOT NULL, "
        "mode TEXT NOT NULL, replay BIGINT NOT NULL, output TEXT, backfill TEXT, "
        "trace_id TEXT, error TEXT, checks TEXT, ver {ver} NOT NULL, " + SOURCE + ")",
        "CREATE INDEX runs_stage_ended ON runs (stage, ended_ms)",
        "CREATE INDEX runs_status_ended ON runs (status, ended_ms)",
        "CREATE INDEX runs_ended ON runs (ended_ms)",
        "CREATE TABLE run_inputs (run_id TEXT NOT NULL, pos BIGINT NOT NULL, "
        "asset TEXT NOT NULL, partition_key TEXT NOT NULL, version BIGINT NOT NULL, "
        "arrival_id TEXT NOT NULL, ver {ver} NOT NULL, PRIMARY KEY (run_id, pos))",
        "CREATE INDEX run_inputs_arrival ON run_inputs (arrival_id)",
        "CREATE INDEX run_inputs_asset ON run_inputs (asset, partition_key)",
        "CREATE TABLE run_outputs (run_id TEXT NOT NULL, pos BIGINT NOT NULL, "
        "arrival_id TEXT NOT NULL, ver {ver} NOT NULL, PRIMARY KEY (run_id, pos))",
        "CREATE INDEX run_outputs_arrival ON run_outputs (arrival_id)",
        "CREATE TABLE dead_letters (id TEXT NOT NULL, kind TEXT NOT NULL, stage TEXT NOT NULL, "
        "reason TEXT NOT NULL, arrival_id TEXT, run_id TEXT, attempts BIGINT, "
        "ts_ms BIGINT NOT NULL, payload TEXT NOT NULL, origin TEXT, error TEXT, sensitive TEXT, "
        "truncated TEXT, ver {ver} NOT NULL, " + SOURCE + ", "
        "PRIMARY KEY (src_topic, src_partition, src_offset))",
        "CREATE INDEX dead_letters_ts ON dead_letters (ts_ms)",
        "CREATE INDEX dead_letters_run ON dead_letters (run_id)",
        "CREATE TABLE holds (stage TEXT NOT NULL, partition_key TEXT NOT NULL, "
        "held BIGINT NOT NULL, kafka_partition BIGINT, since_ms BIGINT, held_by TEXT, "
        "checks TEXT, parked BIGINT NOT NULL, parked_bytes BIGINT NOT NULL, "
        "ver {ver} NOT NULL, " + SOURCE + ", PRIMARY KEY (stage, partition_key))",
        "CREATE TABLE contracts (asset TEXT NOT NULL, version BIGINT NOT NULL, "
        "contract TEXT, fields TEXT NOT NULL, registered_ms BIGINT, ver {ver} NOT NULL, "
        + SOURCE + ", PRIMARY KEY (asset, version))",
        "CREATE TABLE backfills (id TEXT PRIMARY KEY, status TEXT NOT NULL, "
        "pipeline TEXT NOT NULL, asset TEXT NOT NULL, target TEXT NOT NULL, "
        "stages TEXT NOT NULL, range_start TEXT NOT NULL, range_end TEXT NOT NULL, "
        "keys_done BIGINT NOT NULL, keys_total BIGINT NOT NULL, "
        "records_done BIGINT NOT NULL, records_total BIGINT NOT NULL, "
        "created_ms BIGINT NOT NULL, updated_ms BIGINT NOT NULL, completed_ms BIGINT, "
        "error TEXT, job TEXT NOT NULL, ver {ver} NOT NULL, " + SOURCE + ")",
    )),
)
"""Every step, oldest first; ``CATALOG_SCHEMA`` is the last one's version."""

CATALOG_SCHEMA = MIGRATIONS[-1].version

VERSION_TABLE = ("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER PRIMARY KEY, "
                 "name TEXT NOT NULL, applied_ms BIGINT NOT NULL)")

DATA_TABLES = ("runs", "run_inputs", "run_outputs", "dead_letters", "holds", "contracts",
               "backfills", "positions")
"""What ``rebuild`` empties (``schema_version`` stays)."""
