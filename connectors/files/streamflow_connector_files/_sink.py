"""The directory sink: JSON Lines or Parquet files per asset partition, appended by default."""

from __future__ import annotations

import asyncio
import glob
import hashlib
import string
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from streamflow.connectors import ConnectorContext, SinkRecord, write_atomic

from ._formats import decode, encode, pyarrow_modules
from ._parts import PartWriter

Rows = dict[str, dict[str, object]]


Mode = Literal["append", "rewrite", "append-parts"]
MIB = 1 << 20


class FilesSinkConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    path: Path = Field(description="output directory")
    format: Literal["jsonl", "parquet"] = "jsonl"
    partition_path: str | None = Field(
        None,
        description="relative output path (without extension) per partition; fields {asset} "
                    "and {partition}, e.g. '{asset}/day={partition}/part'. Default: "
                    "'{asset}/{partition}/part' (append) or '{asset}-{partition}', without "
                    "the partition for an asset that has no partition_by")
    mode: Mode = Field(
        "append",
        description="append: rows appended to numbered parts per partition, rolled by size "
                    "or age (memory: one batch); rewrite: one file per partition, rewritten "
                    "on each flush (memory: every row); append-parts: one part per flush")
    roll_bytes: int = Field(64 * MIB, ge=1, description="append: start a new part before "
                            "a flush would take the current one past this size")
    roll_s: float | None = Field(None, gt=0, description="append: start a new part once the "
                                 "current one is this many seconds old (at the next flush)")
    max_buffered_rows: int = Field(
        10_000, ge=1, description="append, append-parts: write() flushes once this many rows "
                                  "wait")

    @field_validator("partition_path")
    @classmethod
    def _template(cls, v: str | None) -> str | None:
        if v is None:
            return v
        try:
            fields = {f for _, f, _, _ in string.Formatter().parse(v) if f is not None}
        except ValueError as e:
            raise ValueError(f"invalid template {v!r}: {e}") from None
        if unknown := fields - {"asset", "partition"}:
            raise ValueError(f"template {v!r} may only use {{asset}} and {{partition}}, "
                             f"not {', '.join(sorted(unknown))}")
        parts = v.split("/")
        if v.startswith("/") or not parts[-1] or ".." in parts or "." in parts:
            raise ValueError(f"template {v!r} must be a relative path ending in a file name")
        return v


class FilesSink:
    """Writes JSON Lines or Parquet files under ``path``, per asset partition.

    ``append`` (the default) keeps only the batch in memory: each flush appends its rows, with
    ``_key`` and ``_arrival_id``, to the current part of each partition and fsyncs it before
    the engine commits. A redelivered record is appended again; readers keep the latest row
    per ``_key`` (``read_rows``). ``rewrite`` keeps every row keyed and atomically rewrites
    the touched files on each flush, so a redelivered record replaces itself, at the cost of
    memory. ``append-parts`` writes one immutable part per flush, named by a hash of its rows'
    arrival ids, so replaying the same batch rewrites the same part.
    """

    def __init__(self, config: FilesSinkConfig,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.cfg = config
        self.location = str(config.path)
        self._ext = "." + config.format
        self._rows: dict[str, Rows] = {}  # rewrite: output path (relative) → key → every row
        self._pending: dict[str, Rows] = {}  # append*: output path → key → the batch's rows
        self._dirty: set[str] = set()
        self._buffered = 0
        self._asset = "records"
        self._partitioned = True
        self._template = config.partition_path or "{asset}-{partition}"
        self._parts = PartWriter(config.path, config.format, config.roll_bytes, config.roll_s,
                                 clock)

    @property
    def held_rows(self) -> int:
        """Rows kept in memory: the batch not yet flushed, plus every row in ``rewrite``."""
        return sum(map(len, self._pending.values())) + sum(map(len, self._rows.values()))

    async def setup(self, ctx: ConnectorContext) -> None:
        self._asset = ctx.asset
        self._partitioned = ctx.partition_by is not None
        self._template = self.cfg.partition_path or _default_template(
            self.cfg.mode, self._partitioned)
        if self.cfg.format == "parquet":
            pyarrow_modules()
        self.cfg.path.mkdir(parents=True, exist_ok=True)
        if self.cfg.mode != "rewrite":
            return
        for f in sorted(self.cfg.path.glob(self._render(None) + self._ext)):
            if not f.is_file():
                continue
            rel = f.relative_to(self.cfg.path).as_posix()[: -len(self._ext)]
            rows = self._rows.setdefault(rel, {})
            for row in await asyncio.to_thread(decode, self.cfg.format, f):
                rows[str(row.get("_key") or row.get("_arrival_id"))] = row

    def _render(self, partition: str | None) -> str:
        """The output path for ``partition``, or (``None``) a glob matching every partition."""
        out = []
        for literal, field, _, _ in string.Formatter().parse(self._template):
            out.append(literal if partition is not None else glob.escape(literal))
            if field == "asset":
                out.append(self._asset if partition is not None else glob.escape(self._asset))
            elif field == "partition":
                out.append(_safe(partition) if partition is not None else "*")
        return "/".join(p if p.strip(".") else "_" * len(p) for p in "".join(out).split("/"))

    async def write(self, records: Sequence[SinkRecord]) -> None:
        rewrite = self.cfg.mode == "rewrite"
        held = self._rows if rewrite else self._pending
        for r in records:
            # Without partition_by, a record's partition is its key: one series for the asset.
            target = self._render(r.partition if self._partitioned else "default")
            row = {**r.value, "_key": r.key, "_arrival_id": r.arrival_id}
            held.setdefault(target, {})[r.key or r.arrival_id] = row
            self._dirty.add(target)
            self._buffered += 1
            if not rewrite and self._buffered >= self.cfg.max_buffered_rows:
                await self.flush()  # backpressure: the caller waits for the disk

    async def flush(self) -> None:
        if self.cfg.mode == "append":
            batch = [(t, list(rows.values())) for t, rows in sorted(self._pending.items())]
            try:
                await asyncio.to_thread(self._parts.append_all, batch)
            finally:  # a failed batch is dead-lettered whole: none of it is written later
                self._pending.clear()
                self._dirty.clear()
                self._buffered = 0
            return
        rows_of = self._rows if self.cfg.mode == "rewrite" else self._pending
        for target in sorted(self._dirty):
            rows = rows_of[target]
            if self.cfg.mode == "append-parts":
                ids = "\n".join(sorted(str(r["_arrival_id"]) for r in rows.values()))
                part = hashlib.blake2b(ids.encode(), digest_size=8).hexdigest()
                final = self.cfg.path / f"{target}-{part}{self._ext}"
            else:
                final = self.cfg.path / f"{target}{self._ext}"
            body = await asyncio.to_thread(encode, self.cfg.format, rows.values(), final)
            tmp = final.with_name(final.name + ".tmp")
            await asyncio.to_thread(write_atomic, final, body, tmp)
        self._dirty.clear()
        self._buffered = 0
        self._pending.clear()

    async def stop(self) -> None:
        await self.flush()


def _default_template(mode: Mode, partitioned: bool) -> str:
    if mode == "append":
        return "{asset}/{partition}/part" if partitioned else "{asset}/part"
    return "{asset}-{partition}" if partitioned else "{asset}"


def _safe(part: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in part) or "default"
