"""Quality-gate checks: pure, one verdict per check, JSON-able results, user bugs contained."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Sequence
from datetime import UTC, date, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

import orjson
import pytest
from pydantic import BaseModel

from streamflow.gates import (
    AllowedValues,
    Check,
    CheckResult,
    Expect,
    ExpectBatch,
    Freshness,
    NotNull,
    Pattern,
    Range,
    RowCount,
    Unique,
)
from streamflow.model import MAX_VALUES, run_checks


class Order(BaseModel):
    id: int
    sku: str | None = "AB-1"
    status: str = "new"
    amount_usd: Decimal | None = Decimal("10.00")
    day: date = date(2024, 5, 1)
    at: datetime | None = None
    tags: list[str] = []


class Other(BaseModel):
    """A record without the checked fields: missing reads as null."""

    id: int


def orders(n: int, **overrides: dict[int, Any]) -> list[Order]:
    """``n`` valid orders; ``amount_usd={1: None}`` sets record 1's amount_usd to None."""
    out = []
    for i in range(n):
        fields = {k: v[i] for k, v in overrides.items() if i in v}
        out.append(Order(id=i, **fields))
    return out


def check_one(
    check: Check, records: Sequence[BaseModel], history: Sequence[int] = ()
) -> CheckResult:
    [result] = run_checks([check], records, history)
    assert orjson.loads(orjson.dumps(result.to_json())) == result.to_json()  # always JSON-able
    return result


# -- record-level checks ------------------------------------------------------------------------


def test_not_null_passes_and_fails_with_indexes() -> None:
    ok = check_one(NotNull("amount_usd"), orders(3))
    assert ok == CheckResult("not_null(amount_usd)", "error", True, "ok")

    bad = check_one(NotNull("amount_usd"), orders(40, amount_usd={3: None, 17: None}))
    assert not bad.passed and bad.level == "error"
    assert bad.failing == (3, 17) and bad.values == ()
    assert bad.detail == "2 of 40 records failed (index 3, 17): amount_usd is null"


def test_missing_attribute_is_null_and_single_record_detail_has_no_index() -> None:
    r = check_one(NotNull("amount_usd"), [Other(id=1)])
    assert r.detail == "1 of 1 record failed: amount_usd is null" and r.failing == (0,)


def test_warn_level_and_custom_name_are_carried_through() -> None:
    check = NotNull("sku", level="warn", name="sku present")
    r = check_one(check, orders(2, sku={0: None}))
    assert (r.check, r.level, r.passed) == ("sku present", "warn", False)
    assert r.to_json() == {"check": "sku present", "level": "warn", "passed": False,
                           "detail": "1 of 2 records failed (index 0): sku is null",
                           "failing": [0], "values": []}


def test_default_names() -> None:
    assert [c.name for c in (NotNull("a"), Range("a", 0), AllowedValues("a", [1]),
                             Pattern("a", "x"), Unique("a"), Freshness("a", 1),
                             RowCount(min=1))] == [
        "not_null(a)", "range(a)", "allowed_values(a)", "pattern(a)", "unique(a)",
        "freshness(a)", "row_count"]


def test_batch_only_flags() -> None:
    assert Unique("a").batch_only and RowCount(min=1).batch_only
    assert not any(c.batch_only for c in (
        NotNull("a"), Range("a", 0), AllowedValues("a", [1]), Pattern("a", "x"),
        Freshness("a", 1), Expect(lambda r: True, "e"), ExpectBatch(lambda rs: True, "b")))


def test_range_decimal_bounds_and_json_values() -> None:
    check = Range("amount_usd", min=Decimal("0"), max=Decimal("100"))
    assert check_one(check, orders(3, amount_usd={0: Decimal("0"), 2: Decimal("100")})).passed

    records = orders(5, amount_usd={0: Decimal("-3"), 1: None, 2: Decimal("150.5"),
                                    3: Decimal("-3")})
    r = check_one(check, records)
    assert r.failing == (0, 1, 2, 3)
    assert r.values == ("-3", "150.5")  # deduped in order, Decimals as str, nulls not kept
    assert r.detail == ("4 of 5 records failed (index 0, 1, 2, 3): amount_usd=-3 is below min 0; "
                        "amount_usd is null; amount_usd=150.5 is above max 100")
    assert orjson.loads(orjson.dumps(r.to_json()))["values"] == ["-3", "150.5"]


def test_range_on_dates_keeps_iso_values() -> None:
    check = Range("day", min=date(2024, 1, 1), level="warn")
    r = check_one(check, orders(2, day={1: date(2023, 12, 31)}))
    assert (r.passed, r.level, r.values) == (False, "warn", ("2023-12-31",))
    assert "day=2023-12-31 is below min 2024-01-01" in r.detail


def test_range_with_an_incomparable_value_fails_instead_of_raising() -> None:
    r = check_one(Range("status", max=10), orders(1))
    assert not r.passed and r.detail == "1 of 1 record failed: status='new' is not comparable " \
        "with the bounds"


def test_allowed_values() -> None:
    check = AllowedValues("status", ["new", "paid"])
    assert check.values == frozenset({"new", "paid"})
    assert check_one(check, orders(2, status={1: "paid"})).passed

    r = check_one(check, orders(4, status={1: "lost", 2: "lost", 3: "void"}))
    assert r.failing == (1, 2, 3) and r.values == ("lost", "void")
    assert r.detail == ("3 of 4 records failed (index 1, 2, 3): status='lost' is not one of "
                        "{'new', 'paid'}; status='void' is not one of {'new', 'paid'}")


def test_allowed_values_with_an_unhashable_value_fails_cleanly() -> None:
    r = check_one(AllowedValues("tags", [("a",)]), [Order(id=1, tags=["a"])])
    assert not r.passed and r.values == (["a"],)


def test_pattern() -> None:
    check = Pattern("sku", r"[A-Z]{2}-\d+")
    assert check_one(check, orders(2)).passed
    r = check_one(check, orders(3, sku={0: "ab-1", 2: None}))
    assert r.failing == (0, 2) and r.values == ("ab-1",)
    assert r.detail == ("2 of 3 records failed (index 0, 2): sku='ab-1' does not match "
                        "'[A-Z]{2}-\\\\d+'; sku is null")
    assert check_one(Pattern("id", r"\d"), orders(3)).passed  # matched on str(value)
    assert not check_one(Pattern("sku", r"AB"), orders(1)).passed  # fullmatch, not search


def test_values_are_capped_and_many_reasons_elided() -> None:
    r = check_one(Range("id", max=-1), orders(50))
    assert len(r.values) == MAX_VALUES and r.values[:2] == (0, 1)
    assert len(r.failing) == 50
    assert r.detail.startswith("50 of 50 records failed (index 0, 1, 2, 3, 4, ...): id=0 ")
    assert r.detail.endswith("; ...")
    assert len(CheckResult("x", "error", False, "d", values=tuple(range(99))).values) == MAX_VALUES


# -- batch checks --------------------------------------------------------------------------------


def test_unique() -> None:
    assert check_one(Unique("id"), orders(5)).passed
    records = orders(6, sku={0: "A", 1: "B", 2: "A", 3: None, 4: None, 5: "B"})
    r = check_one(Unique("sku"), records)
    assert r.failing == (0, 1, 2, 5)  # nulls are not duplicates
    assert r.values == ("A", "B")
    assert r.detail == "4 of 6 records share a sku value with another: 'A' (2x), 'B' (2x)"


def test_unique_on_unhashable_and_decimal_values() -> None:
    r = check_one(Unique("tags"), [Order(id=i, tags=["x"]) for i in range(2)])
    assert r.failing == (0, 1) and r.values == (["x"],)
    d = check_one(Unique("amount_usd"), orders(3))
    assert d.values == ("10.00",) and d.failing == (0, 1, 2)


def test_row_count_absolute() -> None:
    check = RowCount(min=2, max=4)
    assert check_one(check, orders(3)) == CheckResult("row_count", "error", True, "row count 3 ok")
    low = check_one(check, orders(1))
    assert (low.passed, low.detail, low.failing, low.values) == (
        False, "row count 1 is below min 2", (), (1,))
    assert check_one(check, orders(5)).detail == "row count 5 is above max 4"
    assert not check_one(RowCount(min=1), []).passed


def test_row_count_drop_and_spike_against_the_median() -> None:
    history = [40, 38, 41, 40, 44]
    drop = check_one(RowCount(max_drop=0.5), orders(3), history)
    assert not drop.passed and drop.values == (3,)
    assert drop.detail == "row count 3 is below 0.5 x the median 40 of the last 5 runs"

    spike = check_one(RowCount(max_spike=2, level="warn"), orders(81), history)
    assert (spike.passed, spike.level) == (False, "warn")
    assert spike.detail == "row count 81 is above 2 x the median 40 of the last 5 runs"

    ok = check_one(RowCount(max_spike=2, max_drop=0.5), orders(20), history)
    assert ok.passed and ok.detail == "row count 20 ok; the median 40 of the last 5 runs"


def test_row_count_uses_only_the_last_history_runs() -> None:
    check = RowCount(max_drop=0.5, history=3)
    # Old runs were large; the last three (10, 12, 11) set the median.
    r = check_one(check, orders(6), [1000, 1000, 1000, 10, 12, 11])
    assert r.passed and r.detail == "row count 6 ok; the median 11 of the last 3 runs"
    assert check_one(RowCount(max_spike=1.5, history=2, min_history=2), orders(16), [10, 11]) \
        .detail == "row count 16 is above 1.5 x the median 10.5 of the last 2 runs"


def test_row_count_waits_for_enough_history() -> None:
    r = check_one(RowCount(max_drop=0.5, max_spike=2), orders(1), [40, 40])
    assert r.passed and r.detail == "row count 1 ok; not enough history (2 of 3 runs)"
    # Absolute bounds still apply without history.
    both = check_one(RowCount(min=5, max_drop=0.5), orders(1), [])
    assert not both.passed and both.detail == "row count 1 is below min 5"


def test_freshness_with_injected_now() -> None:
    now = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
    check = Freshness("at", max_age_s=600, now=lambda: now)
    fresh = [Order(id=1, at=now - timedelta(hours=3)), Order(id=2, at=now - timedelta(seconds=600))]
    assert check_one(check, fresh).passed

    stale = [Order(id=1, at=now - timedelta(hours=2)), Order(id=2, at=now - timedelta(hours=1)),
             Order(id=3, at=None)]
    r = check_one(check, stale)
    assert not r.passed and r.failing == ()
    assert r.values == ("2024-05-01T11:00:00+00:00",)
    assert r.detail == "newest at 2024-05-01T11:00:00+00:00 is 3600s old, above max 600s"


def test_freshness_naive_is_utc_and_other_zones_compare_correctly() -> None:
    now = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
    check = Freshness("at", 60, now=lambda: now)
    assert check_one(check, [Order(id=1, at=datetime(2024, 5, 1, 11, 59, 30))]).passed
    plus2 = timezone(timedelta(hours=2))
    assert check_one(check, [Order(id=1, at=datetime(2024, 5, 1, 13, 59, 30, tzinfo=plus2))]).passed
    assert not check_one(check, [Order(id=1, at=datetime(2024, 5, 1, 12, 0, tzinfo=plus2))]).passed


def test_freshness_empty_null_and_wrong_type() -> None:
    check = Freshness("at", 60, level="warn")
    assert check_one(check, []) == CheckResult("freshness(at)", "warn", False, "no records")
    assert check_one(check, orders(2)).detail == "all 2 records have at null"
    wrong = check_one(Freshness("status", 60), orders(1))
    assert not wrong.passed and wrong.detail.startswith("check raised TypeError: status='new'")


def test_freshness_defaults_to_the_wall_clock() -> None:
    assert check_one(Freshness("at", 60), [Order(id=1, at=datetime.now(UTC))]).passed
    # The injected clock is not part of a check's identity.
    assert Freshness("at", 60, now=lambda: datetime.now(UTC)) == Freshness("at", 60)


# -- custom checks -------------------------------------------------------------------------------


def positive(o: Order) -> bool | str | None:
    if o.amount_usd is None:
        return None
    return True if o.amount_usd > 0 else f"order {o.id} has amount {o.amount_usd}"


def test_expect() -> None:
    check = Expect(positive, "positive amount", level="warn")
    assert check_one(check, orders(2, amount_usd={1: None})).passed
    r = check_one(check, orders(3, amount_usd={0: Decimal("-1"), 2: Decimal("0")}))
    assert (r.check, r.level, r.failing, r.values) == ("positive amount", "warn", (0, 2), ())
    assert r.detail == ("2 of 3 records failed (index 0, 2): order 0 has amount -1; "
                        "order 2 has amount 0")
    false = check_one(Expect(lambda o: o.id != 1, "not one"), orders(3))
    assert false.failing == (1,) and false.detail.endswith(": returned False")


def test_expect_that_raises_fails_that_record_only() -> None:
    r = check_one(Expect(lambda o: 1 / o.id > 0, "inverse"), orders(3))
    assert r.failing == (0,)
    assert r.detail == "1 of 3 records failed (index 0): raised ZeroDivisionError: division by zero"


def test_expect_batch() -> None:
    def total_under(records: Sequence[Any]) -> str | None:
        total = sum(r.amount_usd for r in records)
        return None if total < 100 else f"total {total} is not under 100"

    check = ExpectBatch(total_under, "total")
    assert check_one(check, orders(1)).passed  # runs on a single-record batch too
    r = check_one(check, orders(10))
    assert r == CheckResult("total", "error", False, "total 100.00 is not under 100")
    assert not check_one(ExpectBatch(lambda rs: len(rs) > 5, "big"), orders(2)).passed


def test_a_check_that_raises_is_a_failed_result_and_the_others_still_run() -> None:
    def boom(records: Sequence[Any]) -> bool:
        raise KeyError("nope")

    results = run_checks([ExpectBatch(boom, "boom", level="warn"), NotNull("sku")], orders(2), [])
    assert results[0] == CheckResult("boom", "warn", False, "check raised KeyError: 'nope'")
    assert results[1].passed


def test_run_checks_order_and_empty() -> None:
    assert run_checks([], orders(2), []) == []
    rs = run_checks([NotNull("id"), RowCount(max=1)], orders(2), [])
    assert [(r.check, r.passed) for r in rs] == [("not_null(id)", True), ("row_count", False)]


# -- validation ----------------------------------------------------------------------------------


async def async_check(record: Any) -> bool:
    return False


@pytest.mark.parametrize(("make", "message"), [
    (lambda: NotNull("a", level="fatal"),  # type: ignore[arg-type]
     "level must be 'error' or 'warn'"),
    (lambda: Range("a"), "needs min, max or both"),
    (lambda: Range("a", min=5, max=1), "min 5 is above max 1"),
    (lambda: Range("a", min="x", max=1), "not comparable"),
    (lambda: AllowedValues("a", "abc"), "must be a collection"),
    (lambda: AllowedValues("a", []), "at least one value"),
    (lambda: AllowedValues("a", [["x"]]), "hashable"),
    (lambda: Pattern("a", "([a-z"), "bad regex"),
    (lambda: RowCount(), "needs min, max, max_spike or max_drop"),
    (lambda: RowCount(min=-1), "must be >= 0"),
    (lambda: RowCount(min=3, max=2), "min 3 is above max 2"),
    (lambda: RowCount(max_spike=0.5), "max_spike is a ratio >= 1"),
    (lambda: RowCount(max_drop=1.5), "max_drop is a ratio in (0, 1]"),
    (lambda: RowCount(max_drop=0), "max_drop is a ratio in (0, 1]"),
    (lambda: RowCount(max_drop=0.5, history=2, min_history=3), "min_history <= history"),
    (lambda: Freshness("a", 0), "max_age_s must be > 0"),
    (lambda: Expect(positive, ""), "non-empty name"),
    (lambda: ExpectBatch("not callable", "x"), "callable fn"),  # type: ignore[arg-type]
    (lambda: Expect(async_check, "a"), "not async"),  # type: ignore[arg-type]
])
def test_invalid_arguments(make: Callable[[], object], message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        make()


def test_checks_are_frozen() -> None:
    check = NotNull("a")
    with pytest.raises(dataclasses.FrozenInstanceError):
        check.field = "b"  # type: ignore[misc]
    assert hash(check) == hash(NotNull("a"))
