"""The ``files`` connector: a landing-directory source and a directory sink.

CSV and JSON Lines need nothing extra; Parquet needs pyarrow (``streamflow[parquet]``), which is
imported only when a pipeline asks for that format.
"""

from __future__ import annotations

import asyncio
import base64
import csv
import glob
import hashlib
import importlib
import io
import os
import string
import time
from collections.abc import AsyncIterator, Iterable, Sequence
from datetime import timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field, field_validator

from ._api import (
    ConnectorContext,
    ConnectorSpec,
    Reject,
    SinkRecord,
    SourceBatch,
    SourceRecord,
    TimeRange,
)
from ._io import write_atomic
from ._registry import ConnectorError

IGNORED_SUFFIXES = (".tmp", ".part", ".partial", ".crdownload")


class FilesSourceConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    path: Path = Field(description="landing directory; processed/ and quarantine/ go beside files")
    format: Literal["csv", "jsonl", "parquet"] = "csv"
    pattern: str = "*"
    watch: bool = Field(False, description="keep watching for new files instead of ending")
    poll_interval_s: float = Field(0.2, gt=0)
    settle_s: float = Field(0.2, ge=0, description="a file must be unchanged this long")


class FilesSource:
    """Reads each landed file once: claim (atomic rename), parse, then processed/ or quarantine/.

    A file still being written (a temp suffix, or modified within ``settle_s``) is left alone.
    After a crash, claimed files go back to the landing folder and are read again; record ids
    derive from the file's content and line, so the re-emitted arrivals dedupe downstream.
    """

    def __init__(self, config: FilesSourceConfig) -> None:
        self.cfg = config
        self.landing = config.path
        self.claimed = config.path / ".claimed"
        self.processed = config.path / "processed"
        self.quarantine = config.path / "quarantine"
        self.ctx: ConnectorContext | None = None
        self.quarantined: list[tuple[str, str]] = []

    async def setup(self, ctx: ConnectorContext) -> None:
        self.ctx = ctx
        if self.cfg.format == "parquet":
            _pyarrow()
        for d in (self.landing, self.claimed, self.processed, self.quarantine):
            d.mkdir(parents=True, exist_ok=True)
        for f in self.claimed.iterdir():  # a crash left these half-done: read them again
            os.replace(f, self.landing / f.name)

    def _scan(self) -> tuple[list[Path], bool]:
        """Files ready to read, and whether others are still settling (being written)."""
        now = time.time()
        ready: list[Path] = []
        settling = False
        for f in sorted(self.landing.glob(self.cfg.pattern)):
            if not f.is_file() or f.name.startswith(".") or f.name.endswith(IGNORED_SUFFIXES):
                continue
            try:
                if now - f.stat().st_mtime < self.cfg.settle_s:
                    settling = True
                    continue
            except FileNotFoundError:
                continue
            ready.append(f)
        return ready, settling

    async def read(self) -> AsyncIterator[SourceBatch]:
        while True:
            files, settling = self._scan()
            for f in files:
                target = self.claimed / f.name
                try:
                    os.replace(f, target)  # the claim: atomic, so two readers never share a file
                except FileNotFoundError:
                    continue
                batch = self._parse(target)
                if batch is not None:
                    yield batch
            if not files and not settling and not self.cfg.watch:
                return
            await asyncio.sleep(self.cfg.poll_interval_s if not files else 0)

    def _parse(self, path: Path) -> SourceBatch | None:
        got = self._load(path)
        if isinstance(got, str):
            self._quarantine(path, got)
            return None
        return got

    async def backfill(self, window: TimeRange) -> AsyncIterator[SourceBatch]:
        """History is every file read already (``processed/``) or waiting to be: the engine
        keeps the records whose event time falls in ``window``. Files are only read, never
        moved, so the live source can run meanwhile; a file it moves during the scan is
        looked for in its next folder."""
        folders = (self.processed, self.claimed, self.landing)
        names = sorted({f.name for d in folders if d.is_dir() for f in d.glob(self.cfg.pattern)
                        if f.is_file() and not f.name.startswith(".")
                        and not f.name.endswith(IGNORED_SUFFIXES)})
        for name in names:
            for d in folders:
                if not (d / name).is_file():
                    continue
                got = await asyncio.to_thread(self._load, d / name)
                if isinstance(got, str):
                    if not (d / name).exists():
                        continue  # moved on meanwhile: read it where it went
                    got = SourceBatch([], [Reject({"file": str(d / name)}, got, "")],
                                      position=name)
                yield got
                break

    def _load(self, path: Path) -> SourceBatch | str:
        """The file's batch, or why it cannot be read."""
        try:
            raw = path.read_bytes()
            text = raw.decode("utf-8") if self.cfg.format != "parquet" else ""
        except (OSError, UnicodeDecodeError) as e:
            return f"cannot read {path.name}: {e}"
        digest = hashlib.blake2b(raw, digest_size=8).hexdigest()
        try:
            if self.cfg.format == "csv":
                records, rejects = self._parse_csv(path.name, digest, text)
            elif self.cfg.format == "jsonl":
                records, rejects = self._parse_jsonl(path.name, digest, text)
            else:
                records, rejects = _parse_parquet(path.name, digest, raw), []
        except _Unreadable as e:
            return str(e)
        return SourceBatch(records, rejects, position=path.name)

    def _parse_csv(
        self, name: str, digest: str, text: str
    ) -> tuple[list[SourceRecord], list[Reject]]:
        reader = csv.reader(io.StringIO(text, newline=""))
        try:
            header = next(reader)
        except (StopIteration, csv.Error) as e:
            raise _Unreadable(f"{name}: no CSV header row ({e or 'empty file'})") from None
        header = [h.strip() for h in header]
        if not any(header) or len(set(header)) != len(header):
            raise _Unreadable(f"{name}: invalid CSV header {header!r}")
        records: list[SourceRecord] = []
        rejects: list[Reject] = []
        while True:
            try:
                row = next(reader)
            except StopIteration:
                break
            except csv.Error as e:
                origin = {"file": name, "line": reader.line_num}
                rejects.append(Reject(origin, f"malformed CSV: {e}", ""))
                continue
            line = reader.line_num
            if not row or all(not c.strip() for c in row):
                continue
            origin = {"file": name, "line": line}
            if len(row) != len(header):
                missing = header[len(row):] if len(row) < len(header) else []
                what = f"missing column(s) {', '.join(missing)}" if missing else "extra column(s)"
                rejects.append(Reject(
                    origin,
                    f"{name} line {line}: expected {len(header)} columns "
                    f"({', '.join(header)}), got {len(row)}: {what}",
                    ",".join(row),
                ))
                continue
            records.append(SourceRecord(dict(zip(header, row, strict=True)), origin,
                                        f"{name}:{digest}:{line}"))
        return records, rejects

    def _parse_jsonl(
        self, name: str, digest: str, text: str
    ) -> tuple[list[SourceRecord], list[Reject]]:
        records: list[SourceRecord] = []
        rejects: list[Reject] = []
        for line, raw in enumerate(text.splitlines(), start=1):
            if not raw.strip():
                continue
            origin = {"file": name, "line": line}
            try:
                data = orjson.loads(raw)
            except orjson.JSONDecodeError as e:
                rejects.append(Reject(origin, f"{name} line {line}: invalid JSON: {e}", raw))
                continue
            if not isinstance(data, dict):
                rejects.append(Reject(origin, f"{name} line {line}: not a JSON object", raw))
                continue
            records.append(SourceRecord(data, origin, f"{name}:{digest}:{line}"))
        return records, rejects

    def _quarantine(self, path: Path, reason: str) -> None:
        dest = self.quarantine / path.name
        os.replace(path, dest)
        (self.quarantine / (path.name + ".reason.txt")).write_text(reason + "\n")
        self.quarantined.append((path.name, reason))

    async def ack(self, batch: SourceBatch) -> None:
        src = self.claimed / batch.position
        if src.exists():
            os.replace(src, self.processed / batch.position)

    async def stop(self) -> None:
        return None


class _Unreadable(Exception):
    pass


def _pyarrow() -> tuple[Any, Any]:
    """(pyarrow, pyarrow.parquet), imported on first use so CSV/JSONL never need them."""
    try:
        return importlib.import_module("pyarrow"), importlib.import_module("pyarrow.parquet")
    except ImportError as e:
        raise ConnectorError(
            f"the files connector needs pyarrow for format='parquet' ({e}); "
            "pip install 'streamflow[parquet]'") from e


def _parse_parquet(name: str, digest: str, raw: bytes) -> list[SourceRecord]:
    """Every row of every row group is a record; a file pyarrow cannot read is unreadable."""
    pa, pq = _pyarrow()
    records: list[SourceRecord] = []
    try:
        pf = pq.ParquetFile(pa.BufferReader(raw))
        row = 0
        for group in range(pf.num_row_groups):
            for data in pf.read_row_group(group).to_pylist():
                row += 1
                origin = {"file": name, "row_group": group, "row": row}
                records.append(SourceRecord({k: _plain(v) for k, v in data.items()}, origin,
                                            f"{name}:{digest}:{row}"))
    except (pa.ArrowException, OSError, ValueError, TypeError) as e:
        raise _Unreadable(f"{name}: unreadable Parquet file: {e}") from None
    return records


def _plain(v: object) -> object:
    """Parquet values that JSON (and dead letters) cannot carry, as JSON-friendly ones."""
    if isinstance(v, Decimal):
        return str(v)
    if isinstance(v, bytes):
        return base64.b64encode(v).decode()
    if isinstance(v, timedelta):
        return v.total_seconds()
    if isinstance(v, dict):
        return {k: _plain(x) for k, x in v.items()}
    if isinstance(v, list):
        return [_plain(x) for x in v]
    return v


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
            _pyarrow()
        self.cfg.path.mkdir(parents=True, exist_ok=True)
        if self.cfg.mode == "append-parts":
            return
        for f in sorted(self.cfg.path.glob(self._render(None) + self._ext)):
            if not f.is_file():
                continue
            rel = f.relative_to(self.cfg.path).as_posix()[: -len(self._ext)]
            rows = self._rows.setdefault(rel, {})
            for row in await asyncio.to_thread(_decode, self.cfg.format, f):
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
            body = await asyncio.to_thread(_encode, self.cfg.format, rows.values(), final)
            tmp = final.with_name(final.name + ".tmp")
            await asyncio.to_thread(write_atomic, final, body, tmp)
        self._dirty.clear()
        self._buffered = 0
        if self.cfg.mode == "append-parts":
            self._rows.clear()

    async def stop(self) -> None:
        await self.flush()


def _encode(fmt: str, rows: Iterable[dict[str, object]], where: Path) -> bytes:
    if fmt == "jsonl":
        return b"".join(orjson.dumps(row) + b"\n" for row in rows)
    pa, pq = _pyarrow()
    rows = list(rows)
    names = list(dict.fromkeys(k for row in rows for k in row))  # every row's fields, in order
    try:
        table = pa.Table.from_pydict({n: [row.get(n) for row in rows] for n in names})
        out = pa.BufferOutputStream()
        pq.write_table(table, out)
    except (pa.ArrowException, ValueError, TypeError) as e:
        raise ValueError(f"cannot write {where} as Parquet: {e}") from e
    body: bytes = out.getvalue().to_pybytes()
    return body


def _decode(fmt: str, path: Path) -> list[dict[str, object]]:
    if fmt == "jsonl":
        return [orjson.loads(line) for line in path.read_bytes().splitlines()]
    _, pq = _pyarrow()
    rows: list[dict[str, object]] = pq.read_table(path).to_pylist()
    return rows


def _safe(part: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in part) or "default"


FILES = ConnectorSpec(
    name="files",
    source=FilesSource,
    sink=FilesSink,
    source_config=FilesSourceConfig,
    sink_config=FilesSinkConfig,
)
