"""Sensitive fields: a contract marks them, and their values stay out of what StreamFlow writes
*about* a record (reasons, errors, check results, spans, logs, ``/status``, alerts, lineage).
The record itself travels on unchanged: topics and dead-letter payloads keep it, replay needs it.

Two mechanisms, because the text about a record is made in many places:
- by field, where the field is known: validation errors, check results, ``dlq show``;
- by value everywhere else: while the engine handles a batch, a ``Redaction`` holding the
  batch's records is current (a context variable), and every channel passes its text through
  ``withheld``, which replaces the values of their sensitive fields with ``***``. The values
  are worked out only when a text is withheld, that is on a failure, never on the hot path.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import date, datetime, time
from typing import Any, get_args

import orjson
from pydantic import BaseModel

from ._payloads import record_text

MASK = "***"
FieldPath = tuple[str, ...]
SHORT = 6
"""A value shorter than this is withheld only as a whole token (a sensitive "42" hides the
"42" in "line 42", not the one in "1425"): a short value hidden inside every word would leave
nothing readable. A longer one is withheld wherever it occurs."""


class Sensitive:
    """Marks a contract field sensitive: ``email: Annotated[str, Sensitive()]``.

    Its value never appears in reasons, errors, check results, spans, logs, ``/status``,
    alerts or lineage events; ``streamflow dlq show`` masks it unless ``--reveal``. A field
    of a nested model (also inside a list) may be marked; marking a model-typed field makes
    all of it sensitive. The key, ``partition_by`` and ``event_time`` fields cannot be
    sensitive: they travel in headers, run ids and the ledger in clear.
    """

    __slots__ = ()

    def __repr__(self) -> str:
        return "Sensitive()"


def _marked(metadata: Iterable[Any]) -> bool:
    return any(m is Sensitive or isinstance(m, Sensitive) for m in metadata)


def _models(annotation: Any) -> Iterator[type[BaseModel]]:
    """The models an annotation holds: ``Card``, ``Card | None``, ``list[Card]``."""
    if inspect.isclass(annotation) and issubclass(annotation, BaseModel):
        yield annotation
        return
    for arg in get_args(annotation):
        yield from _models(arg)


_FIELDS: dict[type[BaseModel], tuple[FieldPath, ...]] = {}


def sensitive_fields(contract: type[BaseModel]) -> tuple[FieldPath, ...]:
    """The contract's sensitive fields as paths of names (an alias is a path of its own)."""
    got = _FIELDS.get(contract)
    if got is None:
        got = _FIELDS[contract] = tuple(_paths(contract, (), frozenset()))
    return got


def _paths(model: type[BaseModel], prefix: FieldPath, seen: frozenset[type]) -> Iterator[FieldPath]:
    if model in seen:  # a recursive model: its own fields were walked already
        return
    for name, f in model.model_fields.items():
        names = [name] + ([f.alias] if isinstance(f.alias, str) and f.alias != name else [])
        if _marked(f.metadata):
            yield from ((*prefix, n) for n in names)
            continue
        for inner in _models(f.annotation):
            for n in names:
                yield from _paths(inner, (*prefix, n), seen | {model})


def sensitive_names(contract: type[BaseModel]) -> list[str]:
    """Dotted names of the contract's sensitive fields, for messages and dead letters."""
    return sorted({".".join(p) for p in sensitive_fields(contract)})


_ABSENT = object()


def _at(node: Any, path: FieldPath) -> Iterator[Any]:
    """The values at ``path`` in a record (a model or its JSON), through lists."""
    if not path:
        yield node
    elif isinstance(node, list | tuple):
        for item in node:
            yield from _at(item, path)
    elif isinstance(node, BaseModel):
        v = getattr(node, path[0], _ABSENT)
        if v is not _ABSENT:
            yield from _at(v, path[1:])
    elif isinstance(node, Mapping):
        v = node.get(path[0], _ABSENT)
        if v is not _ABSENT:
            yield from _at(v, path[1:])


def _leaves(v: Any) -> Iterator[Any]:
    if isinstance(v, BaseModel):
        v = v.model_dump()
    if isinstance(v, Mapping):
        for x in v.values():
            yield from _leaves(x)
    elif isinstance(v, list | tuple | set | frozenset):
        for x in v:
            yield from _leaves(x)
    elif v is not None:
        yield v


def _forms(v: Any) -> set[str]:
    """How a value may be written in a text: as itself, JSON-escaped, repr-escaped, ISO."""
    if isinstance(v, bytes):
        v = v.decode("utf-8", "replace")
    if isinstance(v, str):
        return {v, orjson.dumps(v).decode()[1:-1], repr(v)[1:-1]} - {""}
    forms = {str(v), repr(v)}
    if isinstance(v, date | datetime | time):
        forms.add(v.isoformat())
    return forms - {""}


def _json(data: Any) -> Any:
    if isinstance(data, bytes | bytearray | memoryview | str):
        try:
            return orjson.loads(data)
        except orjson.JSONDecodeError:
            return None
    return data


def values_in(paths: Sequence[FieldPath], data: Any) -> set[str]:
    """Every text form of the sensitive values in ``data``: a model, a dict, or JSON."""
    node = _json(data)
    return {form for p in paths for v in _at(node, p) for leaf in _leaves(v)
            for form in _forms(leaf)}


def _pattern(values: Iterable[str]) -> re.Pattern[str] | None:
    alts = []
    for v in sorted(set(values), key=lambda s: (-len(s), s)):
        e = re.escape(v)
        alts.append(e if len(v) >= SHORT else rf"(?<![\w.@-]){e}(?![\w@-])")
    return re.compile("|".join(alts)) if alts else None


Pending = Callable[[], Iterable[tuple[Sequence[FieldPath], Any]]]


class Redaction:
    """The sensitive values of the records in hand. Records are added as they come (cheaply:
    nothing is read until a text is withheld); ``text`` replaces their values with ``***``."""

    __slots__ = ("_pending", "_re", "_values")

    def __init__(self) -> None:
        self._pending: list[tuple[Sequence[FieldPath], Any] | Pending] = []
        self._values: set[str] = set()
        self._re: re.Pattern[str] | None = None

    def add(self, contract: type[BaseModel], data: Any) -> None:
        """A record of ``contract``: a model, its dict, or its JSON (parsed only if needed)."""
        paths = sensitive_fields(contract)
        if paths:
            self._pending.append((paths, data))

    def add_lazy(self, pending: Pending) -> None:
        """Records to be found only if needed: ``pending()`` yields (paths, data) pairs."""
        self._pending.append(pending)

    def values(self) -> set[str]:
        if self._pending:
            pending, self._pending = self._pending, []
            for item in pending:
                pairs = item() if callable(item) else [item]
                for paths, data in pairs:
                    self._values |= values_in(paths, data)
            self._re = _pattern(self._values)
        return self._values

    def text(self, s: str) -> str:
        self.values()
        return s if self._re is None else self._re.sub(MASK, s)


_CURRENT: ContextVar[Redaction | None] = ContextVar("streamflow_redaction", default=None)


def withheld(text: str) -> str:
    """``text`` without the sensitive values of the records being handled, if any."""
    r = _CURRENT.get()
    return text if r is None else r.text(text)


def current_redaction() -> Redaction | None:
    return _CURRENT.get()


def use_redaction(redaction: Redaction | None) -> None:
    """Make ``redaction`` current for the rest of this task: a loop in a task of its own (a
    source's) replaces it with each batch."""
    _CURRENT.set(redaction)


@contextmanager
def redacting(redaction: Redaction | None) -> Iterator[Redaction | None]:
    """Make ``redaction`` current while a batch is handled (None: nothing to withhold)."""
    if redaction is None:
        yield None
        return
    token = _CURRENT.set(redaction)
    try:
        yield redaction
    finally:
        _CURRENT.reset(token)


def mask(node: Any, paths: Sequence[FieldPath]) -> Any:
    """A copy of a record (JSON-like) with the values at ``paths`` replaced by ``***``."""
    if not paths:
        return node
    if isinstance(node, list):
        return [mask(x, paths) for x in node]
    if not isinstance(node, dict):
        return node
    out = dict(node)
    for key in node:
        inner = [p[1:] for p in paths if p[0] == key]
        if any(not p for p in inner):
            out[key] = MASK
        elif inner:
            out[key] = mask(node[key], inner)
    return out


def mask_payload(payload: str, names: Sequence[str]) -> str:
    """A dead letter's payload for display: its record, or each record of a planned run,
    with the named fields masked; a payload that is not JSON is withheld whole."""
    paths = [tuple(n.split(".")) for n in names]
    try:
        body = orjson.loads(payload)
    except orjson.JSONDecodeError:
        return (f"<withheld: {len(payload)} characters, not JSON, of an asset with sensitive "
                f"fields ({', '.join(names)}); --reveal shows it>")
    slots = body.get("slots") if isinstance(body, dict) else None
    if isinstance(slots, dict) and "run_id" in body:  # a planned run: one record per input
        for slot in slots.values():
            if isinstance(slot, dict) and isinstance(slot.get("value"), str):
                slot["value"] = mask_payload(slot["value"], names)
        return record_text(body)
    return record_text(mask(body, paths))  # a record may be nested past orjson's 254 levels


def is_sensitive(contract: type[BaseModel], loc: Sequence[Any]) -> bool:
    """Whether a validation error's location lies in a sensitive field."""
    names = tuple(str(p) for p in loc if not isinstance(p, int))
    return any(names[:len(p)] == p for p in sensitive_fields(contract))
