"""Quality gates: pure checks over a stage's input records (no I/O, no clock of its own).

Before a stage runs, the engine checks its inputs: one record for a per-record stage, the batch
for a window. Each check gives one ``CheckResult`` at its own level; what a failed ``error`` or
``warn`` result does is the engine's business. ``history`` is the row counts of the stage's
previous passing runs, oldest first; only ``RowCount`` reads it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import date, time
from enum import Enum
from typing import Any, Literal, Protocol

from pydantic import BaseModel

from streamflow.errors import PipelineError

from ._sensitive import MASK, Redaction

Level = Literal["error", "warn"]
MAX_VALUES = 20  # offending values kept per result
_SHOWN = 3  # distinct reasons (or duplicated values) quoted in a detail line

# A verdict: None passes, else the reason and the offending values worth keeping.
_Verdict = tuple[str, tuple[Any, ...]] | None


def _jsonable(v: Any) -> Any:
    """A value orjson writes as-is: dates as ISO strings, Decimals and the unknown as str."""
    if v is None or isinstance(v, bool | int | float | str):
        return v
    if isinstance(v, date | time):  # a datetime is a date
        return v.isoformat()
    if isinstance(v, Enum):
        return _jsonable(v.value)
    if isinstance(v, list | tuple | set | frozenset):
        return [_jsonable(x) for x in v]
    return str(v)


def _show(v: Any) -> str:
    """A value as a detail line quotes it: strings quoted, the rest as JSON would write them."""
    text = repr(v) if isinstance(v, str) else str(_jsonable(v))
    return text if len(text) <= 60 else text[:57] + "..."


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else f"{x:.2f}".rstrip("0")


@dataclass(frozen=True, slots=True)
class CheckResult:
    """One check's verdict. Values are made JSON-able and capped here, whoever built it."""

    check: str
    level: Level
    passed: bool
    detail: str
    failing: tuple[int, ...] = ()
    values: tuple[Any, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "failing", tuple(self.failing))
        object.__setattr__(self, "values", tuple(_jsonable(v) for v in self.values[:MAX_VALUES]))

    def to_json(self) -> dict[str, Any]:
        """As JSON; a shared "ok" result shares its dict too (read it, do not change it)."""
        if self.passed and _PASSED.get((self.check, self.level)) is self:
            d = _PASSED_JSON.get((self.check, self.level))
            if d is None:
                d = _PASSED_JSON[(self.check, self.level)] = self._json()
            return d
        return self._json()

    def _json(self) -> dict[str, Any]:
        if self.passed and not self.values:  # one per check per run in the ledger: keep it short
            d: dict[str, Any] = {"check": self.check, "level": self.level, "passed": True}
            if self.detail != "ok":
                d["detail"] = self.detail
            return d
        return {"check": self.check, "level": self.level, "passed": self.passed,
                "detail": self.detail, "failing": list(self.failing), "values": list(self.values)}


_PASSED: dict[tuple[str, str], CheckResult] = {}
_PASSED_JSON: dict[tuple[str, str], dict[str, Any]] = {}


def passed(check: Check) -> CheckResult:
    """The shared "ok" result of a check: most records pass, and building a result per record
    was half of what a check cost."""
    key = (check.name, check.level)
    r = _PASSED.get(key)
    if r is None:
        r = _PASSED[key] = CheckResult(check.name, check.level, True, "ok")
    return r


class Check(Protocol):
    """What the engine runs. Read-only members, so frozen dataclasses satisfy it."""

    @property
    def name(self) -> str: ...
    @property
    def level(self) -> Level: ...
    @property
    def batch_only(self) -> bool: ...
    def evaluate(self, records: Sequence[BaseModel], history: Sequence[int]) -> CheckResult: ...


def run_checks(
    checks: Sequence[Check], records: Sequence[BaseModel], history: Sequence[int]
) -> list[CheckResult]:
    """Every check over the records. A check that raises counts as failed (at its own level),
    detail names the exception -- user code must never crash the worker."""
    out: list[CheckResult] = []
    for check in checks:
        try:
            out.append(check.evaluate(records, history))
        except Exception as e:  # a user's bug becomes a failed gate, not a dead worker
            out.append(CheckResult(check.name, check.level, False,
                                   f"check raised {type(e).__name__}: {e}"))
    return out


def withhold_values(results: list[CheckResult], records: Sequence[BaseModel]
                    ) -> list[CheckResult]:
    """The results with the values of the records' sensitive fields masked in their details
    and offending values: they go to the ledger, holds, alerts, spans and dead letters."""
    r = Redaction()
    for rec in records:
        r.add(type(rec), rec)
    if not r.values():
        return results
    return [res if res.passed else CheckResult(
        res.check, res.level, False, r.text(res.detail), res.failing,
        tuple(_masked(v, r) for v in res.values)) for res in results]


def _masked(v: Any, r: Redaction) -> Any:
    if isinstance(v, list):
        return [_masked(x, r) for x in v]
    if isinstance(v, str):
        return r.text(v)
    return MASK if v is not None and (str(v) in r.values() or repr(v) in r.values()) else v


def _settle(check: Any, default: str) -> None:
    """Shared __post_init__: validate the level, fill in the default name."""
    if check.level not in ("error", "warn"):
        raise PipelineError(f"{type(check).__name__}: level must be 'error' or 'warn', "
                         f"got {check.level!r}")
    if not check.name:
        object.__setattr__(check, "name", default)


def _per_record(
    check: Check, records: Sequence[BaseModel], probe: Callable[[BaseModel], _Verdict]
) -> CheckResult:
    if len(records) == 1 and probe(records[0]) is None:  # the per-record stage's fast path
        return passed(check)
    failing: list[int] = []
    values: list[Any] = []
    reasons: list[str] = []
    for i, record in enumerate(records):
        bad = probe(record)
        if bad is None:
            continue
        failing.append(i)
        if len(reasons) <= _SHOWN and bad[0] not in reasons:
            reasons.append(bad[0])
        for v in bad[1]:
            if len(values) < MAX_VALUES and v not in values:
                values.append(v)
    if not failing:
        return passed(check)
    n = len(records)
    where = "" if n == 1 else " (index " + ", ".join(map(str, failing[:5])) + (
        ", ...)" if len(failing) > 5 else ")")
    why = "; ".join(reasons[:_SHOWN]) + ("; ..." if len(reasons) > _SHOWN else "")
    detail = f"{len(failing)} of {n} record{'' if n == 1 else 's'} failed{where}: {why}"
    return CheckResult(check.name, check.level, False, detail, tuple(failing), tuple(values))
