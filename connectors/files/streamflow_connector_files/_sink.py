"""The directory sink: JSON Lines or Parquet files, one output path per asset partition."""

from __future__ import annotations

import asyncio
import glob
import hashlib
import string
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from streamflow.connectors import ConnectorContext, SinkRecord, write_atomic

from ._formats import decode, encode, pyarrow_modules

Rows = dict[str, dict[str, object]]


class FilesSinkConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    path: Path = Field(description="output directory")
    format: Literal["jsonl", "parquet"] = "jsonl"
    partition_path: str = Field(
        "{asset}-{partition}",
        description="relative output path (without extension) per partition; "
                    "fields {asset} and {partition}, e.g. '{asset}/day={partition}/part'")
    mode: Literal["rewrite", "append-parts"] = Field(
        "rewrite",
        description="rewrite: one file per partition path, rewritten on each flush (all rows "
                    "kept in memory); append-parts: one immutable part file per flush")
    max_buffered_rows: int = Field(
        10_000, ge=1, description="append-parts: write() flushes once this many rows wait")

    @field_validator("partition_path")
    @classmethod
    def _template(cls, v: str) -> str:
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
    """Writes JSON Lines or Parquet files under ``path``, one output path per asset partition.

    ``rewrite`` keeps every row keyed (record key, else arrival id) and atomically rewrites the
    touched files on each flush, so a redelivered record replaces itself. ``append-parts``
    bounds memory: each flush writes one immutable part per output path, named by a hash of
    its rows' arrival ids, so replaying the same batch rewrites the same part.
    """

    def __init__(self, config: FilesSinkConfig) -> None:
        self.cfg = config
        self.location = str(config.path)
        self._ext = "." + config.format
        self._rows: dict[str, Rows] = {}  # output path (relative, no extension) → key → row
        self._dirty: set[str] = set()
        self._buffered = 0
        self._asset = "records"

    async def setup(self, ctx: ConnectorContext) -> None:
        self._asset = ctx.asset
        if self.cfg.format == "parquet":
            pyarrow_modules()
        self.cfg.path.mkdir(parents=True, exist_ok=True)
        if self.cfg.mode == "append-parts":
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
        for literal, field, _, _ in string.Formatter().parse(self.cfg.partition_path):
            out.append(literal if partition is not None else glob.escape(literal))
            if field == "asset":
                out.append(self._asset if partition is not None else glob.escape(self._asset))
            elif field == "partition":
                out.append(_safe(partition) if partition is not None else "*")
        return "/".join(p if p.strip(".") else "_" * len(p) for p in "".join(out).split("/"))

    async def write(self, records: Sequence[SinkRecord]) -> None:
        for r in records:
            target = self._render(r.partition)
            row = {**r.value, "_key": r.key, "_arrival_id": r.arrival_id}
            self._rows.setdefault(target, {})[r.key or r.arrival_id] = row
            self._dirty.add(target)
            self._buffered += 1
            if self.cfg.mode == "append-parts" and self._buffered >= self.cfg.max_buffered_rows:
                await self.flush()  # backpressure: the caller waits for the disk

    async def flush(self) -> None:
        for target in sorted(self._dirty):
            rows = self._rows[target]
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
        if self.cfg.mode == "append-parts":
            self._rows.clear()

    async def stop(self) -> None:
        await self.flush()


def _safe(part: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in part) or "default"
