"""The checks a quality gate offers: per-field checks (``NotNull``, ``Range``,
``AllowedValues``, ``Pattern``, ``Unique``, ``Freshness``), the batch's ``RowCount``, and the
custom ``Expect`` and ``ExpectBatch``. What they share is in ``_checks``."""

from __future__ import annotations

import inspect
import re
import statistics
from collections.abc import Callable, Collection, Sequence
from dataclasses import KW_ONLY, dataclass
from dataclasses import field as _field
from datetime import UTC, date, datetime, time
from typing import Any, ClassVar

from pydantic import BaseModel

from streamflow.errors import PipelineError

from ._checks import (
    _SHOWN,
    CheckResult,
    Level,
    _num,
    _per_record,
    _settle,
    _show,
    _Verdict,
    passed,
)

_UNHASHABLE = object()  # tags Unique's keys for unhashable values: no user value equals it


@dataclass(frozen=True, slots=True)
class _FieldCheck:
    """A check on one field of each record: its default name is ``snake_kind(field)``; a
    missing attribute reads as null."""

    field: str
    _: KW_ONLY
    level: Level = "error"
    name: str = ""
    batch_only: ClassVar[bool] = False

    def __post_init__(self) -> None:
        _settle(self, re.sub(r"(?<!^)(?=[A-Z])", "_", type(self).__name__).lower()
                + f"({self.field})")

    def _probe(self, v: Any) -> _Verdict:
        raise NotImplementedError

    def evaluate(self, records: Sequence[BaseModel], history: Sequence[int]) -> CheckResult:
        return _per_record(self, records, lambda r: self._probe(getattr(r, self.field, None)))


@dataclass(frozen=True, slots=True)
class NotNull(_FieldCheck):
    """The field is set on every record."""

    def _probe(self, v: Any) -> _Verdict:
        return (f"{self.field} is null", ()) if v is None else None


@dataclass(frozen=True, slots=True)
class Range(_FieldCheck):
    """min <= field <= max (inclusive; numbers, Decimals, dates). A null is out of range."""

    min: Any = None
    max: Any = None

    def __post_init__(self) -> None:
        if self.min is None and self.max is None:
            raise PipelineError(f"Range({self.field!r}) needs min, max or both")
        try:
            if self.min is not None and self.max is not None and self.min > self.max:
                raise PipelineError(
                    f"Range({self.field!r}): min {self.min} is above max {self.max}")
        except TypeError:
            raise PipelineError(f"Range({self.field!r}): min {self.min!r} and max {self.max!r} "
                             "are not comparable") from None
        _FieldCheck.__post_init__(self)

    def _probe(self, v: Any) -> _Verdict:
        if v is None:
            return f"{self.field} is null", ()
        try:
            if self.min is not None and v < self.min:
                return f"{self.field}={_show(v)} is below min {_show(self.min)}", (v,)
            if self.max is not None and v > self.max:
                return f"{self.field}={_show(v)} is above max {_show(self.max)}", (v,)
        except TypeError:  # a str against a number: out of range, not a crash
            return f"{self.field}={_show(v)} is not comparable with the bounds", (v,)
        return None


@dataclass(frozen=True, slots=True)
class AllowedValues(_FieldCheck):
    """The field is one of ``values`` (kept as a frozenset). A null is not allowed."""

    values: Collection[Any]

    def __post_init__(self) -> None:
        what = f"AllowedValues({self.field!r})"
        if isinstance(self.values, str | bytes) or not isinstance(self.values, Collection):
            raise PipelineError(f"{what}: values must be a collection, got {self.values!r}")
        try:
            object.__setattr__(self, "values", frozenset(self.values))
        except TypeError:
            raise PipelineError(f"{what}: values must be hashable") from None
        if not self.values:
            raise PipelineError(f"{what} needs at least one value")
        _FieldCheck.__post_init__(self)

    def _probe(self, v: Any) -> _Verdict:
        try:
            if v in self.values:
                return None
        except TypeError:  # an unhashable value is in no frozenset
            pass
        shown = sorted(map(_show, self.values))
        allowed = ", ".join(shown[:10]) + (", ..." if len(shown) > 10 else "")
        return f"{self.field}={_show(v)} is not one of {{{allowed}}}", (v,)


@dataclass(frozen=True, slots=True)
class Pattern(_FieldCheck):
    """``re.fullmatch(regex, str(field))``; a null does not match."""

    regex: str
    _compiled: re.Pattern[str] = _field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        try:
            object.__setattr__(self, "_compiled", re.compile(self.regex))
        except re.error as e:
            raise PipelineError(f"Pattern({self.field!r}): bad regex {self.regex!r}: {e}") from None
        _FieldCheck.__post_init__(self)

    def _probe(self, v: Any) -> _Verdict:
        if v is None:
            return f"{self.field} is null", ()
        if self._compiled.fullmatch(str(v)):
            return None
        return f"{self.field}={_show(v)} does not match {self.regex!r}", (v,)


@dataclass(frozen=True, slots=True)
class Unique(_FieldCheck):
    """No two records of the batch share the field's value. Nulls are not duplicates of each
    other (``NotNull`` catches them)."""

    batch_only: ClassVar[bool] = True

    def evaluate(self, records: Sequence[BaseModel], history: Sequence[int]) -> CheckResult:
        seen: dict[Any, tuple[Any, list[int]]] = {}
        for i, record in enumerate(records):
            v = getattr(record, self.field, None)
            if v is None:
                continue
            try:
                hash(v)
                key: Any = v
            except TypeError:
                key = (_UNHASHABLE, repr(v))
            seen.setdefault(key, (v, []))[1].append(i)
        dups = [(v, idx) for v, idx in seen.values() if len(idx) > 1]
        if not dups:
            return CheckResult(self.name, self.level, True, "ok")
        failing = sorted(i for _, idx in dups for i in idx)
        shown = ", ".join(f"{_show(v)} ({len(idx)}x)" for v, idx in dups[:_SHOWN])
        detail = (f"{len(failing)} of {len(records)} records share a {self.field} value with "
                  f"another: {shown}{', ...' if len(dups) > _SHOWN else ''}")
        return CheckResult(self.name, self.level, False, detail, tuple(failing),
                           tuple(v for v, _ in dups))


def _utc(v: Any, what: str) -> datetime:
    """A datetime, naive taken as UTC; a date is its midnight UTC."""
    if isinstance(v, datetime):
        return v if v.tzinfo is not None else v.replace(tzinfo=UTC)
    if isinstance(v, date):
        return datetime.combine(v, time(), UTC)
    raise TypeError(f"{what}={v!r} is not a datetime")


@dataclass(frozen=True, slots=True)
class Freshness(_FieldCheck):
    """The batch's newest ``field`` (a datetime; naive is UTC) is at most ``max_age_s`` old.
    ``now`` is injectable for tests; it defaults to the wall clock."""

    max_age_s: float
    now: Callable[[], datetime] | None = _field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        if not self.max_age_s > 0:
            raise PipelineError(f"Freshness({self.field!r}): max_age_s must be > 0, "
                             f"got {self.max_age_s}")
        _FieldCheck.__post_init__(self)

    def evaluate(self, records: Sequence[BaseModel], history: Sequence[int]) -> CheckResult:
        if not records:
            return CheckResult(self.name, self.level, False, "no records")
        stamps = [_utc(v, self.field) for r in records
                  if (v := getattr(r, self.field, None)) is not None]
        if not stamps:
            return CheckResult(self.name, self.level, False,
                               f"all {len(records)} records have {self.field} null")
        newest = max(stamps)
        now = _utc(self.now() if self.now is not None else datetime.now(UTC), "now")
        age = (now - newest).total_seconds()
        if age <= self.max_age_s:
            return CheckResult(self.name, self.level, True, "ok")
        return CheckResult(self.name, self.level, False,
                           f"newest {self.field} {newest.isoformat()} is {_num(round(age))}s old, "
                           f"above max {_num(self.max_age_s)}s", values=(newest,))


@dataclass(frozen=True, slots=True)
class RowCount:
    """The batch's size: absolute bounds, and/or relative to the median of the stage's last
    ``history`` passing runs (``max_spike=3``: above 3 x the median fails; ``max_drop=0.5``:
    below half the median fails). The relative bounds wait for ``min_history`` prior runs. A
    median of 0 makes any non-empty batch a spike."""

    min: int | None = None
    max: int | None = None
    max_spike: float | None = None
    max_drop: float | None = None
    history: int = 7
    min_history: int = 3
    _: KW_ONLY
    level: Level = "error"
    name: str = ""
    batch_only: ClassVar[bool] = True

    def __post_init__(self) -> None:
        if (self.min, self.max, self.max_spike, self.max_drop) == (None,) * 4:
            raise PipelineError("RowCount needs min, max, max_spike or max_drop")
        if (self.min or 0) < 0 or (self.max or 0) < 0:
            raise PipelineError(f"RowCount: min and max must be >= 0, got {self.min}, {self.max}")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise PipelineError(f"RowCount: min {self.min} is above max {self.max}")
        if self.max_spike is not None and self.max_spike < 1:
            raise PipelineError(f"RowCount: max_spike is a ratio >= 1, got {self.max_spike}")
        if self.max_drop is not None and not 0 < self.max_drop <= 1:
            raise PipelineError(f"RowCount: max_drop is a ratio in (0, 1], got {self.max_drop}")
        if not 1 <= self.min_history <= self.history:
            raise PipelineError(f"RowCount: need 1 <= min_history <= history, got "
                             f"min_history={self.min_history}, history={self.history}")
        _settle(self, "row_count")

    def evaluate(self, records: Sequence[BaseModel], history: Sequence[int]) -> CheckResult:
        count, note = len(records), ""
        problems: list[str] = []
        if self.min is not None and count < self.min:
            problems.append(f"row count {count} is below min {self.min}")
        if self.max is not None and count > self.max:
            problems.append(f"row count {count} is above max {self.max}")
        if self.max_spike is not None or self.max_drop is not None:
            recent = list(history)[-self.history :]
            if len(recent) < self.min_history:
                note = f"not enough history ({len(recent)} of {self.min_history} runs)"
            else:
                median = statistics.median(recent)
                note = f"the median {_num(median)} of the last {len(recent)} runs"
                if self.max_spike is not None and count > median * self.max_spike:
                    problems.append(f"row count {count} is above {_num(self.max_spike)} x {note}")
                if self.max_drop is not None and count < median * self.max_drop:
                    problems.append(f"row count {count} is below {_num(self.max_drop)} x {note}")
        if problems:
            return CheckResult(self.name, self.level, False, "; ".join(problems), values=(count,))
        return CheckResult(self.name, self.level, True,
                           f"row count {count} ok" + (f"; {note}" if note else ""))


def _verdict(out: Any) -> str | None:
    """A custom check's answer: True/None pass, a str fails with itself as the reason."""
    if out is None:
        return None
    if isinstance(out, str):
        return out or "failed"
    return None if out else f"returned {out!r}"


def _check_fn(check: Expect | ExpectBatch) -> None:
    kind = type(check).__name__
    if not check.name or not callable(check.fn):
        raise PipelineError(f"{kind} needs a callable fn and a non-empty name")
    if inspect.iscoroutinefunction(check.fn):  # its coroutine is truthy: it would always pass
        raise PipelineError(f"{kind}({check.name!r}): fn must be a plain function, not async")


@dataclass(frozen=True, slots=True)
class Expect:
    """A custom record-level check: ``fn(record)`` -> True/None pass, False or a reason fails.
    A record whose ``fn`` raises fails with the exception as its reason; the others still run."""

    fn: Callable[[Any], bool | str | None]
    name: str
    _: KW_ONLY
    level: Level = "error"
    batch_only: ClassVar[bool] = False

    def __post_init__(self) -> None:
        _check_fn(self)
        _settle(self, self.name)

    def _probe(self, record: BaseModel) -> _Verdict:
        try:
            reason = _verdict(self.fn(record))
        except Exception as e:
            reason = f"raised {type(e).__name__}: {e}"
        return None if reason is None else (reason, ())

    def evaluate(self, records: Sequence[BaseModel], history: Sequence[int]) -> CheckResult:
        return _per_record(self, records, self._probe)


@dataclass(frozen=True, slots=True)
class ExpectBatch:
    """A custom batch-level check: ``fn(records)``, answering as for ``Expect``. It may run on a
    one-record batch (a per-record stage), so it is not ``batch_only``."""

    fn: Callable[[Sequence[Any]], bool | str | None]
    name: str
    _: KW_ONLY
    level: Level = "error"
    batch_only: ClassVar[bool] = False

    def __post_init__(self) -> None:
        _check_fn(self)
        _settle(self, self.name)

    def evaluate(self, records: Sequence[BaseModel], history: Sequence[int]) -> CheckResult:
        reason = _verdict(self.fn(records))
        return passed(self) if reason is None else CheckResult(self.name, self.level, False,
                                                                reason)
