"""SQL helpers shared by the SQL connectors: quoting, type inference, JSON-safe rows, state.

Nothing here imports a database driver, so the connector modules stay importable without
their extras.
"""

from __future__ import annotations

import datetime as dt
import decimal
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from operator import itemgetter
from pathlib import Path
from typing import Any

import orjson

from streamflow.connectors import write_atomic

PG_TYPES: Mapping[str, str] = {
    "str": "text", "int": "bigint", "float": "double precision", "bool": "boolean",
    "json": "jsonb", "null": "text",
}
"""How a JSON value's kind maps to a PostgreSQL column type when a sink creates its table."""


def quote_ident(name: str) -> str:
    """Quote an SQL identifier (``"a""b"``), so any column or table name is safe in a statement."""
    return '"' + name.replace('"', '""') + '"'


def qualified(table: str, schema: str | None) -> str:
    return f"{quote_ident(schema)}.{quote_ident(table)}" if schema else quote_ident(table)


def json_kind(value: Any) -> str:
    """The JSON kind of a value: str, int, float, bool, json (object/array) or null."""
    if value is None:
        return "null"
    if isinstance(value, bool):  # before int: bool is an int subclass
        return "bool"
    if isinstance(value, int):
        return "int"
    if isinstance(value, float):
        return "float"
    if isinstance(value, str):
        return "str"
    return "json"


def infer_column_types(
    rows: Iterable[Mapping[str, Any]], types: Mapping[str, str] = PG_TYPES
) -> dict[str, str]:
    """Column name -> SQL type from sample rows, in first-seen column order.

    The first non-null value decides a column's kind; ints mixed with floats become floats,
    any other mix (or a column that is always null) falls back to the ``str``/``null`` type.
    """
    kinds: dict[str, str] = {}
    for row in rows:
        for col, value in row.items():
            kind = json_kind(value)
            seen = kinds.setdefault(col, kind)
            if seen == kind or kind == "null":
                continue
            if seen == "null":
                kinds[col] = kind
            elif {seen, kind} == {"int", "float"}:
                kinds[col] = "float"
            else:
                kinds[col] = "str"
    return {col: types[kind] for col, kind in kinds.items()}


def json_safe(value: Any) -> Any:
    """A database value as something orjson and a pydantic contract (lax mode) both accept."""
    if value is None or isinstance(value, str | int | float | dict | list | dt.date | dt.time
                                   | uuid.UUID):
        return value
    if isinstance(value, decimal.Decimal):
        return str(value)  # exact; pydantic parses it back into Decimal, float or int
    if isinstance(value, dt.timedelta):
        return value.total_seconds()
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value).hex()
    if isinstance(value, tuple):
        return [json_safe(v) for v in value]
    return str(value)


def read_state(path: Path) -> dict[str, Any] | None:
    try:
        data = orjson.loads(path.read_bytes())
    except FileNotFoundError:
        return None
    except orjson.JSONDecodeError as e:
        raise ValueError(f"state file {path} is corrupt ({e}); delete it to start over") from e
    return data if isinstance(data, dict) else None


def write_state(path: Path, state: Mapping[str, Any]) -> None:
    """Write a small JSON state file atomically and durably (temp file, fsync, rename)."""
    write_atomic(path, orjson.dumps(state))


# Value encoding for a driver with strict binary codecs (asyncpg): a column is converted only
# when it holds a type the driver would refuse or silently mangle (1.5 into bigint, say).

Converter = Callable[[Any], Any]
_NONE = type(None)


def to_text(v: Any) -> Any:
    return v if v is None or v.__class__ is str else orjson.dumps(v).decode()


def to_int(v: Any) -> Any:
    if v is None or v.__class__ is int:
        return v
    if isinstance(v, float) and v.is_integer():
        return int(v)
    if isinstance(v, bool | str):
        return int(v)
    raise ValueError("not an integer")


def to_float(v: Any) -> Any:
    return v if v is None or v.__class__ is float else float(v)


def to_bool(v: Any) -> Any:
    if v is None or isinstance(v, bool):
        return v
    if isinstance(v, str) and v.lower() in ("true", "false", "t", "f", "1", "0"):
        return v.lower() in ("true", "t", "1")
    raise ValueError("not a boolean")


def to_json(v: Any) -> Any:
    return None if v is None else orjson.dumps(v).decode()


Codec = tuple[Converter, frozenset[type]]
"""A converter and the value types that may pass to the driver unconverted."""
TEXT: Codec = (to_text, frozenset({str, _NONE}))
INT: Codec = (to_int, frozenset({int, _NONE}))
FLOAT: Codec = (to_float, frozenset({float, int, _NONE}))
BOOL: Codec = (to_bool, frozenset({bool, _NONE}))
JSON: Codec = (to_json, frozenset())


class BadValue(ValueError):
    def __init__(self, column: str, index: int, value: Any, reason: str) -> None:
        super().__init__(f"column {column!r} cannot hold {value!r}: {reason}")
        self.column, self.index, self.value = column, index, value


def encode_column(name: str, values: Sequence[Any], codec: Codec) -> Sequence[Any]:
    conv, ok = codec
    if set(map(type, values)) <= ok:
        return values
    out = []
    for i, v in enumerate(values):
        try:
            out.append(conv(v))
        except (ValueError, TypeError) as e:
            raise BadValue(name, i, v, str(e)) from e
    return out


def encode_columns(rows: Sequence[Mapping[str, Any]], fields: Sequence[str],
                   codecs: Sequence[Codec]) -> list[Sequence[Any]]:
    """The ``fields`` of ``rows`` column by column (a missing field is None), encoded."""
    if not fields:
        return []
    if len(fields) == 1:
        f = fields[0]
        cols: list[Sequence[Any]] = [[r.get(f) for r in rows]]
    else:
        get = itemgetter(*fields)
        try:
            raw = [get(r) for r in rows]
        except KeyError:
            raw = [tuple(r.get(f) for f in fields) for r in rows]
        cols = list(zip(*raw, strict=True)) if raw else [[] for _ in fields]
    return [encode_column(f, c, codec) for f, c, codec in zip(fields, cols, codecs, strict=True)]
