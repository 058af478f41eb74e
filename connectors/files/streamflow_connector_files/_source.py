"""The landing-directory source: each landed file is claimed, parsed, then moved on."""

from __future__ import annotations

import asyncio
import hashlib
import os
import stat
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from streamflow.connectors import ConnectorContext, Reject, SourceBatch, TimeRange

from ._formats import Unreadable, parse_csv, parse_jsonl, parse_parquet, pyarrow_modules

IGNORED_SUFFIXES = (".tmp", ".part", ".partial", ".crdownload")
MAX_FILE_BYTES = 256 * 1024 * 1024


class FilesSourceConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    path: Path = Field(description="landing directory; processed/ and quarantine/ go beside files")
    format: Literal["csv", "jsonl", "parquet"] = "csv"
    pattern: str = "*"
    watch: bool = Field(False, description="keep watching for new files instead of ending")
    poll_interval_s: float = Field(0.2, gt=0)
    settle_s: float = Field(0.2, ge=0, description="a file must be unchanged this long")
    max_file_bytes: int = Field(
        MAX_FILE_BYTES, gt=0,
        description="a larger file is quarantined unread (a file is parsed in memory)")
    allow_duplicate_keys: bool = Field(
        False, description="accept a JSON Lines object with a name twice (the last one wins) "
        "instead of dead-lettering it")


def _candidate(f: Path) -> bool:
    return f.is_file() and not f.name.startswith(".") and not f.name.endswith(IGNORED_SUFFIXES)


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
            pyarrow_modules()
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
            if not _candidate(f):
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
                        if _candidate(f)})
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
        raw = self._read_bytes(path)
        if isinstance(raw, str):
            return raw
        try:
            text = raw.decode("utf-8") if self.cfg.format != "parquet" else ""
        except UnicodeDecodeError as e:
            return f"cannot read {path.name}: {e}"
        digest = hashlib.blake2b(raw, digest_size=8).hexdigest()
        try:
            if self.cfg.format == "csv":
                records, rejects = parse_csv(path.name, digest, text)
            elif self.cfg.format == "jsonl":
                records, rejects = parse_jsonl(path.name, digest, text,
                                               self.cfg.allow_duplicate_keys)
            else:
                records, rejects = parse_parquet(path.name, digest, raw), []
        except Unreadable as e:
            return str(e)
        return SourceBatch(records, rejects, position=path.name)

    def _read_bytes(self, path: Path) -> bytes | str:
        """The file's bytes, or why it is refused: a symbolic link that leaves the landing
        folder, or a file above ``max_file_bytes`` (judged by its size before any is read)."""
        target = path
        if path.is_symlink():
            # A link's target is taken relative to the landing folder, where it was landed.
            home = Path(os.path.realpath(self.landing))
            target = Path(os.path.realpath(self.landing / os.readlink(path)))
            if not target.is_relative_to(home):
                return (f"{path.name}: a symbolic link to {target}, outside the landing folder "
                        f"{home}; not read")
        limit = self.cfg.max_file_bytes
        try:  # O_NOFOLLOW: the checked target cannot be swapped for a link before the open
            with os.fdopen(os.open(target, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0)),
                           "rb") as fh:
                st = os.fstat(fh.fileno())
                if not stat.S_ISREG(st.st_mode):
                    return f"{path.name}: not a regular file; not read"
                if st.st_size > limit:
                    return (f"{path.name}: {st.st_size} bytes, above max_file_bytes ({limit}); "
                            "not read")
                raw = fh.read(limit + 1)
        except OSError as e:
            return f"cannot read {path.name}: {e}"
        if len(raw) > limit:
            return f"{path.name}: grew past max_file_bytes ({limit}) while being read; not read"
        return raw

    def _quarantine(self, path: Path, reason: str) -> None:
        dest = self.quarantine / path.name
        os.replace(path, dest)
        (self.quarantine / (path.name + ".reason.txt")).write_text(reason + "\n")
        self.quarantined.append((path.name, reason))

    async def ack(self, batch: SourceBatch) -> None:
        src = self.claimed / batch.position
        if src.is_symlink() or src.exists():  # a relative link dangles in .claimed/
            os.replace(src, self.processed / batch.position)

    async def stop(self) -> None:
        return None
