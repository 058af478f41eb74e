"""Duplicate names in a JSON object, for sources that read external bytes.

orjson (and most parsers) keep the last of two equal names without a word, so a record can
say two things and StreamFlow would silently pick one. A source checks what it parsed with
``duplicate_name``; StreamFlow's own topics are never checked (it writes no duplicates).
"""

from __future__ import annotations

import json
from typing import Any


class _Marked(dict[str, Any]):
    """A JSON object that had a name twice: ``dup`` is the first such name."""

    __slots__ = ("dup",)

    def __init__(self, pairs: list[tuple[str, Any]], dup: str) -> None:
        super().__init__(pairs)
        self.dup = dup


def duplicate_name(raw: bytes | str, data: Any) -> str | None:
    """The first name given twice in one object of ``raw`` (``data`` is ``raw`` parsed), or
    None. Cheap when there is none: each name in ``raw`` is followed by one ``:``, so if the
    colons of ``raw`` outside strings number the names in ``data``, no name was dropped. Only
    when they do not (a colon escaped as ``\\u003a``, or a duplicate) is ``raw`` parsed again
    with the standard library, which reports each object's names."""
    colons, escaped = (raw.count(b":"), b"\\u" in raw) if isinstance(raw, bytes) else (
        raw.count(":"), "\\u" in raw)
    if not escaped:
        names, in_strings = _tally(data)
        if colons - in_strings == names:
            return None
    return first_duplicate(parse_marked(raw))


def parse_marked(raw: bytes | str) -> Any:
    """``raw`` parsed by the standard library, each object that had a duplicate name marked
    (see ``first_duplicate``); None if it is nested too deep for that parser to check."""
    try:
        return json.loads(raw, object_pairs_hook=_mark)
    except (ValueError, RecursionError):  # orjson read it; a check too deep is given up
        return None


def first_duplicate(parsed: Any) -> str | None:
    """The first duplicate name marked anywhere in ``parsed`` (from ``parse_marked``)."""
    todo = [parsed]
    while todo:
        v = todo.pop()
        if isinstance(v, _Marked):
            return v.dup
        if isinstance(v, dict):
            todo.extend(v.values())
        elif isinstance(v, list):
            todo.extend(v)
    return None


def _mark(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    seen: set[str] = set()
    for name, _ in pairs:
        if name in seen:
            return _Marked(pairs, name)
        seen.add(name)
    return dict(pairs)


def _tally(data: Any) -> tuple[int, int]:
    """(names of every object in ``data``, colons inside its strings, names included)."""
    names = colons = 0
    todo = [data]
    while todo:
        v = todo.pop()
        if isinstance(v, dict):
            names += len(v)
            for k, x in v.items():
                colons += k.count(":")
                if isinstance(x, str):
                    colons += x.count(":")
                elif isinstance(x, dict | list):
                    todo.append(x)
        elif isinstance(v, list):
            for x in v:
                if isinstance(x, str):
                    colons += x.count(":")
                elif isinstance(x, dict | list):
                    todo.append(x)
        elif isinstance(v, str):
            colons += v.count(":")
    return names, colons
