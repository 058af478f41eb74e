"""Reading a files sink's output the documented way: the latest row per ``_key`` wins.

The sink appends, so a record redelivered after a crash (at-least-once) can be in a part twice;
this rule, applied per output series, gives each key once. Users and tests share it.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any, Literal

import orjson

from ._formats import pyarrow_modules
from ._parts import part_number

log = logging.getLogger("streamflow.connectors.files")
_HASHED = re.compile(r"-[0-9a-f]{16}$")  # an append-parts part: <stem>-<hash of its ids>


def read_rows(path: str | Path, *, format: Literal["jsonl", "parquet"] = "jsonl"
              ) -> list[dict[str, Any]]:
    """Every row the ``files`` sink left under ``path`` (searched recursively), each key once.

    Files are grouped into series by output path (``part-00001`` and ``part-00002`` are one
    series; a ``rewrite`` file is a series of its own). Within a series, parts are read in
    number order and lines in file order, and the last row per ``_key`` (``_arrival_id`` when
    the record had no key) wins. A torn last line of a JSON Lines part (a crash mid-append) is
    skipped, and so is an empty part. Rows come out series by series, in the order of their
    latest write.
    """
    root = Path(path)
    series: dict[tuple[str, str], list[tuple[int, int, Path]]] = {}
    for f in root.rglob("*." + format):
        if not f.is_file():
            continue
        stem = f.name[: -len(format) - 1]
        found = part_number(stem)
        base, number = found if found else (_HASHED.sub("", stem), 0)
        mtime = f.stat().st_mtime_ns  # orders append-parts parts (named by a hash)
        series.setdefault((str(f.parent), base), []).append((number, mtime, f))
    out: list[dict[str, Any]] = []
    for _, parts in sorted(series.items()):
        latest: dict[str, dict[str, Any]] = {}
        for _, _, f in sorted(parts):
            for row in _rows(f, format):
                ident = str(row.get("_key") or row.get("_arrival_id"))  # as the sink keys
                latest.pop(ident, None)  # re-inserted: rows stay in order of their latest write
                latest[ident] = row
        out.extend(latest.values())
    return out


def _rows(f: Path, fmt: str) -> list[dict[str, Any]]:
    if f.stat().st_size == 0:  # a reserved part a crash left empty, or a part with no rows yet
        return []
    if fmt == "parquet":
        _, pq = pyarrow_modules()
        rows: list[dict[str, Any]] = pq.read_table(f).to_pylist()
        return rows
    data = f.read_bytes()
    lines = data.split(b"\n")
    if lines[-1]:
        log.warning("%s: skipping its torn last line (%d bytes): a write was interrupted", f,
                    len(lines[-1]))
    out = []
    for n, line in enumerate(lines[:-1], start=1):
        if line.strip():
            try:
                out.append(orjson.loads(line))
            except orjson.JSONDecodeError as e:
                raise ValueError(f"{f} line {n}: invalid JSON: {e}") from None
    return out
