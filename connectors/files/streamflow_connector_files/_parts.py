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
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from streamflow.connectors import write_atomic

from ._formats import encode

PART_DIGITS = 5
OPEN_SERIES = 1024
"""Series whose current part a writer remembers; a series written to again after falling out
starts a new part, so an asset with very many partitions costs no more memory than this."""
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
        self._open: OrderedDict[str, _Part] = OrderedDict()  # stem → current part, by use

    def append_all(self, batch: Iterable[tuple[str, list[dict[str, object]]]]) -> None:
        """``append`` each series' rows: one call (one thread hop) per flush."""
        for stem, rows in batch:
            self.append(stem, rows)

    def append(self, stem: str, rows: Iterable[dict[str, object]]) -> Path:
        """Write ``rows`` durably to the series ``stem``; returns the part written."""
        body = encode(self.fmt, rows, self.root / f"{stem}{self.ext}")
        part = self._current(stem, len(body))
        if self.fmt != "jsonl":  # cannot append: the new, empty part is replaced whole
            tmp = part.path.with_name(part.path.name + ".tmp")
            write_atomic(part.path, body, tmp)
            return part.path
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
            self._open.move_to_end(stem)
            return part
        folder, base = self._series(stem)
        number = self._create(folder, base, part.number if part else None)
        part = _Part(folder, base, number, 0, self.clock(), self._name(folder, base, number))
        self._open[stem] = part
        self._open.move_to_end(stem)
        while len(self._open) > OPEN_SERIES:
            self._open.popitem(last=False)
        return part

    def _must_roll(self, part: _Part, incoming: int) -> bool:
        if self.fmt != "jsonl" or (part.size and part.size + incoming > self.roll_bytes):
            return True
        if self.roll_s is not None and self.clock() - part.opened >= self.roll_s:
            return True
        # Another writer (a worker that owned these keys before a rebalance) started a later
        # part: write after it, so the later part holds the later rows.
        return self._name(part.folder, part.base, part.number + 1).exists()

    def _create(self, folder: Path, base: str, after: int | None) -> int:
        """Create the next free part (empty) after ``after`` (else the last on disk),
        exclusively, so no other writer can take it; returns its number."""
        folder.mkdir(parents=True, exist_ok=True)
        number = (_last_number(folder, base, self.ext) if after is None else after) + 1
        while True:
            try:
                open(self._name(folder, base, number), "xb").close()
            except FileExistsError:
                number += 1
                continue
            _fsync_dir(folder)
            return number

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
