"""Parsing and encoding of the file formats: CSV and JSON Lines need nothing extra; Parquet
needs pyarrow (``streamflow[parquet]``), imported only when a pipeline asks for that format."""

from __future__ import annotations

import base64
import csv
import importlib
from collections.abc import Iterable
from datetime import timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import orjson

from streamflow.connectors import ConnectorError, Reject, SourceRecord, duplicate_name

Parsed = tuple[list[SourceRecord], list[Reject]]


class Unreadable(Exception):
    """The whole file cannot be read: it goes to quarantine with this reason."""


def pyarrow_modules() -> tuple[Any, Any]:
    """(pyarrow, pyarrow.parquet), imported on first use so CSV/JSONL never need them."""
    try:  # deferred: pyarrow is the optional `parquet` extra
        return importlib.import_module("pyarrow"), importlib.import_module("pyarrow.parquet")
    except ImportError as e:
        raise ConnectorError(
            f"the files connector needs pyarrow for format='parquet' ({e}); "
            "pip install 'streamflow[parquet]'") from e


BOM = "\ufeff"


class _Lines:
    """The CSV reader's input, keeping the text of the record being read (a reject's
    payload). Lines end at ``\n`` only (the reader takes a ``\r`` before it as part of the
    line end): U+2028 or a lone ``\r`` in a quoted field is data."""

    def __init__(self, text: str) -> None:
        parts = text.split("\n")
        self._lines = iter([p + "\n" for p in parts[:-1]] + ([parts[-1]] if parts[-1] else []))
        self.taken: list[str] = []

    def __iter__(self) -> _Lines:
        return self

    def __next__(self) -> str:
        line = next(self._lines)
        self.taken.append(line)
        return line


def parse_csv(name: str, digest: str, text: str) -> Parsed:
    """Rows of a CSV file with a header; a UTF-8 byte-order mark before the header is not
    part of it. Quoting is strict: a stray quote, or one never closed, rejects its row."""
    lines = _Lines(text.removeprefix(BOM))
    reader = csv.reader(lines, strict=True)
    try:
        header = next(reader)
    except (StopIteration, csv.Error) as e:
        raise Unreadable(f"{name}: no CSV header row ({e or 'empty file'})") from None
    header = [h.strip() for h in header]
    if not any(header) or len(set(header)) != len(header):
        raise Unreadable(f"{name}: invalid CSV header {header!r}")
    records: list[SourceRecord] = []
    rejects: list[Reject] = []
    while True:
        start = reader.line_num + 1
        lines.taken.clear()
        try:
            row = next(reader)
        except StopIteration:
            break
        except csv.Error as e:
            rejects.append(_malformed(name, start, e, "".join(lines.taken)))
            continue
        line = reader.line_num
        if not row or all(not c.strip() for c in row):
            continue
        origin = {"file": name, "line": line}
        if len(row) != len(header):
            rejects.append(_wrong_width(name, line, header, row, origin))
            continue
        records.append(SourceRecord(dict(zip(header, row, strict=True)), origin,
                                    f"{name}:{digest}:{line}"))
    return records, rejects


def _malformed(name: str, line: int, e: csv.Error, raw: str) -> Reject:
    what = ("a quoted field opened on this line is never closed" if "end of data" in str(e)
            else str(e))
    return Reject({"file": name, "line": line}, f"{name} line {line}: malformed CSV: {what}",
                  raw)


def _wrong_width(name: str, line: int, header: list[str], row: list[str],
                 origin: dict[str, Any]) -> Reject:
    missing = header[len(row):] if len(row) < len(header) else []
    what = f"missing column(s) {', '.join(missing)}" if missing else "extra column(s)"
    return Reject(
        origin,
        f"{name} line {line}: expected {len(header)} columns "
        f"({', '.join(header)}), got {len(row)}: {what}",
        ",".join(row),
    )


def parse_jsonl(name: str, digest: str, text: str, allow_duplicates: bool = False) -> Parsed:
    """One JSON object per line. Lines end at ``\n`` (a ``\r`` before it is dropped) and
    nowhere else: U+2028 or U+0085 inside a string is data. A byte-order mark at the start
    of the file is not; a name given twice in one object rejects the line."""
    records: list[SourceRecord] = []
    rejects: list[Reject] = []
    for line, raw in enumerate(text.removeprefix(BOM).split("\n"), start=1):
        raw = raw.removesuffix("\r")
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
        dup = None if allow_duplicates else duplicate_name(raw, data)
        if dup is not None:
            rejects.append(Reject(origin, f"{name} line {line}: {duplicated(dup)}", raw))
            continue
        records.append(SourceRecord(data, origin, f"{name}:{digest}:{line}"))
    return records, rejects


def duplicated(name: str) -> str:
    return (f"the name {name!r} appears twice in one JSON object (set allow_duplicate_keys "
            "to accept such records, the last one winning)")


def parse_parquet(name: str, digest: str, raw: bytes) -> list[SourceRecord]:
    """Every row of every row group is a record; a file pyarrow cannot read is unreadable."""
    pa, pq = pyarrow_modules()
    records: list[SourceRecord] = []
    try:
        pf = pq.ParquetFile(pa.BufferReader(raw))
        row = 0
        for group in range(pf.num_row_groups):
            for data in pf.read_row_group(group).to_pylist():
                row += 1
                origin = {"file": name, "row_group": group, "row": row}
                records.append(SourceRecord({k: plain(v) for k, v in data.items()}, origin,
                                            f"{name}:{digest}:{row}"))
    except (pa.ArrowException, OSError, ValueError, TypeError) as e:
        raise Unreadable(f"{name}: unreadable Parquet file: {e}") from None
    return records


def plain(v: object) -> object:
    """Parquet values that JSON (and dead letters) cannot carry, as JSON-friendly ones."""
    if isinstance(v, Decimal):
        return str(v)
    if isinstance(v, bytes):
        return base64.b64encode(v).decode()
    if isinstance(v, timedelta):
        return v.total_seconds()
    if isinstance(v, dict):
        return {k: plain(x) for k, x in v.items()}
    if isinstance(v, list):
        return [plain(x) for x in v]
    return v


def encode(fmt: str, rows: Iterable[dict[str, object]], where: Path) -> bytes:
    if fmt == "jsonl":
        return b"".join(orjson.dumps(row) + b"\n" for row in rows)
    pa, pq = pyarrow_modules()
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


def decode(fmt: str, path: Path) -> list[dict[str, object]]:
    if fmt == "jsonl":
        return [orjson.loads(line) for line in path.read_bytes().splitlines()]
    _, pq = pyarrow_modules()
    rows: list[dict[str, object]] = pq.read_table(path).to_pylist()
    return rows
