"""Numbered part files: ``<stem>-00001.<ext>``, appended to and rolled by size or age.

One series per output path. The order of parts and lines is the order of writes, which is what
the read rule "the latest row per key wins" (``read_rows``) relies on.
"""

from __future__ import annotations

import contextlib
import glob
import os
import re
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from ._formats import encode

PART_DIGITS = 5
_NUMBER = re.compile(rf"-(\d{{{PART_DIGITS},}})$")


def part_number(stem: str) -> tuple[str, int] | None:
    """(series stem, number) of a part's file stem, e.g. ``part-00012`` → (``part``, 12)."""
    m = _NUMBER.search(stem)
    return (stem[: m.start()], int(m.group(1))) if m else None


@dataclass(slots=True)
class _Part:
    folder: Path
    base: str
    number: int
    size: int
    opened: float
    path: Path


class PartWriter:
    """Appends each flush's rows to the current part of their series, fsynced before returning.

    A part is never reopened by a later run or after a failed write: a run that died mid-line
    leaves a torn last line that nothing is appended after, and readers skip it. A new part
    takes the next free number, created exclusively, so several workers writing one
    directory never share a file; a writer also rolls when it sees a part numbered after its
    own, so a later write of a key always lands in a later part. Formats that cannot be
    appended to (Parquet) get a new part per flush.
    """

    def __init__(self, root: Path, fmt: str, roll_bytes: int, roll_s: float | None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.root, self.fmt = root, fmt
        self.ext = "." + fmt
        self.roll_bytes, self.roll_s, self.clock = roll_bytes, roll_s, clock
        self._open: dict[str, _Part] = {}  # series stem (relative) → its current part

    def append(self, stem: str, rows: Iterable[dict[str, object]]) -> Path:
        """Write ``rows`` durably to the series ``stem``; returns the part written."""
        where = self.root / f"{stem}{self.ext}"
        body = encode(self.fmt, rows, where)
        if self.fmt != "jsonl":
            self._open.pop(stem, None)
            return self._whole_part(stem, body)
        part = self._current(stem, len(body))
        try:
            with open(part.path, "ab") as fh:
                fh.write(body)
                fh.flush()
                os.fsync(fh.fileno())
        except BaseException:
            self._open.pop(stem, None)  # never append after what may be half a line
            with contextlib.suppress(OSError):
                os.truncate(part.path, part.size)
            raise
        part.size += len(body)
        return part.path

    def _current(self, stem: str, incoming: int) -> _Part:
        part = self._open.get(stem)
        if part is not None and not self._must_roll(part, incoming):
            return part
        path, number = self._create(stem, exclusive_body=None)
        folder, base = self._series(stem)
        part = self._open[stem] = _Part(folder, base, number, 0, self.clock(), path)
        return part

    def _must_roll(self, part: _Part, incoming: int) -> bool:
        if part.size and part.size + incoming > self.roll_bytes:
            return True
        if self.roll_s is not None and self.clock() - part.opened >= self.roll_s:
            return True
        # Another writer (a worker that owned these keys before a rebalance) started a later
        # part: write after it, so the later part holds the later rows.
        return self._name(part.folder, part.base, part.number + 1).exists()

    def _whole_part(self, stem: str, body: bytes) -> Path:
        """A part written in one go: reserved exclusively, then replaced atomically."""
        final, _ = self._create(stem, exclusive_body=b"")
        tmp = final.with_name(final.name + ".tmp")
        with open(tmp, "wb") as fh:
            fh.write(body)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, final)
        return final

    def _create(self, stem: str, exclusive_body: bytes | None) -> tuple[Path, int]:
        """Create the next free part of ``stem`` (empty), exclusively: (path, number)."""
        folder, base = self._series(stem)
        folder.mkdir(parents=True, exist_ok=True)
        number = _last_number(folder, base, self.ext) + 1
        while True:
            path = self._name(folder, base, number)
            try:
                with open(path, "xb") as fh:
                    fh.write(exclusive_body or b"")
            except FileExistsError:
                number += 1
                continue
            _fsync_dir(folder)
            return path, number

    def _series(self, stem: str) -> tuple[Path, str]:
        """(folder, base name) of a series: ``a/b/part`` → (``<root>/a/b``, ``part``)."""
        path = self.root / stem
        return path.parent, path.name

    def _name(self, folder: Path, base: str, number: int) -> Path:
        return folder / f"{base}-{number:0{PART_DIGITS}d}{self.ext}"


def _last_number(folder: Path, base: str, ext: str) -> int:
    last = 0
    for p in folder.glob(glob.escape(base) + "-*" + ext):
        found = part_number(p.name[: -len(ext)])
        if found is not None and found[0] == base:
            last = max(last, found[1])
    return last


def _fsync_dir(folder: Path) -> None:
    """Make a new part's name durable, not only its content (POSIX; a no-op elsewhere)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
