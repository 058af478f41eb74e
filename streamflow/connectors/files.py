"""The ``files`` connector: a landing-directory source and a JSON Lines directory sink."""

from __future__ import annotations

import asyncio
import csv
import hashlib
import io
import os
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field

from ._api import ConnectorContext, ConnectorSpec, Reject, SinkRecord, SourceBatch, SourceRecord

IGNORED_SUFFIXES = (".tmp", ".part", ".partial", ".crdownload")


class FilesSourceConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    path: Path = Field(description="landing directory; processed/ and quarantine/ go beside files")
    format: Literal["csv", "jsonl"] = "csv"
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
        try:
            raw = path.read_bytes()
            text = raw.decode("utf-8")
        except (OSError, UnicodeDecodeError) as e:
            self._quarantine(path, f"cannot read {path.name}: {e}")
            return None
        digest = hashlib.blake2b(raw, digest_size=8).hexdigest()
        try:
            if self.cfg.format == "csv":
                records, rejects = self._parse_csv(path.name, digest, text)
            else:
                records, rejects = self._parse_jsonl(path.name, digest, text)
        except _Unreadable as e:
            self._quarantine(path, str(e))
            return None
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


class FilesSinkConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    path: Path = Field(description="output directory")
    format: Literal["jsonl"] = "jsonl"


class FilesSink:
    """Writes JSON Lines, one file per asset partition, atomically replaced on each flush.

    Rows are kept keyed (by record key, else arrival id) so a redelivered record replaces
    itself instead of appearing twice.
    """

    def __init__(self, config: FilesSinkConfig) -> None:
        self.cfg = config
        self.location = str(config.path)
        self._rows: dict[str, dict[str, dict[str, object]]] = {}
        self._dirty: set[str] = set()
        self._asset = "records"

    async def setup(self, ctx: ConnectorContext) -> None:
        self._asset = ctx.asset
        self.cfg.path.mkdir(parents=True, exist_ok=True)
        for f in self.cfg.path.glob(f"{self._asset}-*.jsonl"):
            part = f.name[len(self._asset) + 1 : -len(".jsonl")]
            rows = self._rows.setdefault(part, {})
            for line in f.read_bytes().splitlines():
                row = orjson.loads(line)
                rows[str(row.get("_key") or row.get("_arrival_id"))] = row

    async def write(self, records: Sequence[SinkRecord]) -> None:
        for r in records:
            part = _safe(r.partition)
            row = {**r.value, "_key": r.key, "_arrival_id": r.arrival_id}
            self._rows.setdefault(part, {})[r.key or r.arrival_id] = row
            self._dirty.add(part)

    async def flush(self) -> None:
        for part in sorted(self._dirty):
            final = self.cfg.path / f"{self._asset}-{part}.jsonl"
            tmp = final.with_suffix(".jsonl.tmp")
            body = b"".join(orjson.dumps(row) + b"\n" for row in self._rows[part].values())
            await asyncio.to_thread(_write_atomic, tmp, final, body)
        self._dirty.clear()

    async def stop(self) -> None:
        await self.flush()


def _safe(part: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in part) or "default"


def _write_atomic(tmp: Path, final: Path, body: bytes) -> None:
    with open(tmp, "wb") as fh:
        fh.write(body)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, final)


FILES = ConnectorSpec(
    name="files",
    source=FilesSource,
    sink=FilesSink,
    source_config=FilesSourceConfig,
    sink_config=FilesSinkConfig,
)
