"""A benchmark's ``met`` is false when its run lost or duplicated anything: the checks of
``bench/_met.py`` and the reports built on them, fed fabricated results (no broker)."""

from __future__ import annotations

import argparse
from collections import Counter
from pathlib import Path
from typing import Any

import orjson
import pytest

from bench import _backfill_pipeline as bp
from bench import _met, _peers_report, _soak_met, backfill_live, peers
from bench import _soak_check as soak_check
from bench._met import completion, count_check, error_lines, exact, run_problems
from streamflow import Settings

N = 1000


def throughput(rps: float = 10_000.0, **over: Any) -> dict[str, Any]:
    """A clean throughput run of ``N`` outputs, with ``over`` changed."""
    res: dict[str, Any] = {"records_per_s": rps, "rss_mb": 80.0, "cpu_s_per_million": 50.0,
                           "outputs": N, "distinct": N, "expected": N, "capped": False,
                           "errors": 0, "error_lines": [], "log": "/tmp/x.log",
                           "exit_status": 0, "note": None}
    res.update(over)
    return res


def latency(**over: Any) -> dict[str, Any]:
    res: dict[str, Any] = {"records_per_s": 1000.0, "p50_ms": 2.0, "p99_ms": 5.0,
                           "p999_ms": 9.0, "sustained": True, "rss_mb": 50.0,
                           "cpu_s_per_million": 400.0, "outputs": N, "distinct": N,
                           "duplicates": 0, "expected": N, "capped": False, "errors": 0,
                           "error_lines": [], "exit_status": 0, "note": None}
    res.update(over)
    return res


def kinds(res: dict[str, Any], is_latency: bool = False) -> set[str]:
    return {p["kind"] for p in run_problems(res, is_latency)}


# --- one run --------------------------------------------------------------------------------

def test_a_clean_run_has_no_problem() -> None:
    assert run_problems(throughput()) == []
    assert run_problems(latency(), True) == []


def test_a_missing_output_is_a_problem() -> None:
    assert kinds(throughput(outputs=N - 1, distinct=N - 1)) == {"missing"}


def test_a_duplicated_output_is_a_problem() -> None:
    # N records read back but one key twice: one missing, one duplicated
    assert kinds(throughput(outputs=N, distinct=N - 1)) == {"missing", "duplicates"}
    assert kinds(throughput(outputs=N + 1, distinct=N)) == {"duplicates"}


def test_a_capped_run_is_a_problem_but_not_charged_with_loss() -> None:
    assert kinds(throughput(capped=True, outputs=N // 2, distinct=N // 2)) == {"capped"}


def test_an_error_line_is_a_problem() -> None:
    bad = throughput(errors=1, error_lines=["2026-12-05 10:00:00,000 ERROR streamflow.stage: x"])
    assert kinds(bad) == {"errors"}
    assert "ERROR streamflow.stage" in run_problems(bad)[0]["detail"]


def test_a_latency_run_that_did_not_sustain_its_rate_is_a_problem() -> None:
    assert kinds(latency(sustained=False), True) == {"unsustained"}
    assert kinds(latency(duplicates=2, outputs=N + 2), True) == {"duplicates"}


def test_a_run_without_a_result_failed_and_a_skipped_one_is_no_problem() -> None:
    assert kinds({"note": "run failed: KafkaError"}) == {"failed"}
    assert run_problems({"note": "no exactly_once setting", "skipped": True}) == []


def test_a_nonzero_exit_is_a_problem() -> None:
    assert kinds(throughput(exit_status=-9)) == {"exit"}


def test_error_lines_in_each_log_format() -> None:
    log = "\n".join([
        "2026-12-05 10:00:00,001 WARNING aiokafka: Topic x not found",
        "2026-12-05 10:00:00,002 ERROR streamflow.stage: run failed",
        '{"ts": "x", "level": "error", "logger": "streamflow.engine", "message": "boom"}',
        '{"ts": "x", "level": "warning", "logger": "streamflow.engine", "message": "Error?"}',
        "[2026-12-05 10:00:00,003] [ERROR] [quixstreams] : failed",
        "CRITICAL asyncio: Task exception was never retrieved",
        "an Error in a message, not a level",
        "streamflow: {'records_in': 1000, 'dead_lettered': 0}",
    ])
    found = error_lines(log)
    assert len(found) == 4
    assert not any("WARNING" in x or "warning" in x for x in found)


def test_count_check() -> None:
    assert count_check(5, 5, 5) == []
    assert [p["kind"] for p in count_check(5, 6, 6)] == ["missing"]  # an unexpected key


# --- the peers benchmark --------------------------------------------------------------------

SYSTEMS = (("streamflow", "defaults", 9000.0), ("aiokafka-raw", "at-least-once", 10000.0),
           ("faust", "at-least-once", 2000.0), ("quix", "at-least-once", 8000.0))


def rows(broken: dict[tuple[str, str], dict[str, Any]] | None = None,
         repeats: int = 1) -> list[dict[str, Any]]:
    """Peers rows whose map ratios meet every goal; ``broken``: (system, workload) -> the
    fields to change in that row's last repeat."""
    out = []
    for workload in ("map", "join"):
        for system, settings, rps in SYSTEMS:
            rs = [throughput(rps, cpu_s_per_million=500_000 / rps) for _ in range(repeats)]
            rs[-1].update((broken or {}).get((system, workload), {}))
            out.append(peers._row((workload, system, settings, None), rs))
    for system, settings, _ in SYSTEMS:
        rs = [latency() for _ in range(repeats)]
        rs[-1].update((broken or {}).get((system, "latency"), {}))
        out.append(peers._row(("latency", system, settings, 1000.0), rs))
    for row in out:
        row["version"] = "v"
    return out


def test_a_clean_peers_run_is_met() -> None:
    g = _peers_report.goals(rows(repeats=3))
    assert g["ratios_met"] and g["run_counts"] and g["met"]
    assert g["broken_rows"] == g["void_comparisons"] == g["flagged_rows"] == []


@pytest.mark.parametrize(("workload", "change", "why"), [
    ("map", {"outputs": N - 3, "distinct": N - 3}, "missing 3 of 1,000 outputs"),
    ("join", {"outputs": N + 2}, "2 duplicate outputs"),
    ("map", {"capped": True, "outputs": 10, "distinct": 10}, "capped"),
    ("join", {"errors": 1, "error_lines": ["x ERROR streamflow.stage: boom"]}, "ERROR"),
    ("latency", {"sustained": False}, "did not sustain its rate"),
    ("map", {"note": "run failed: OSError", "outputs": None}, "run failed"),
])
def test_a_broken_streamflow_row_makes_peers_not_met(workload: str, change: dict[str, Any],
                                                     why: str) -> None:
    g = _peers_report.goals(rows({("streamflow", workload): change}, repeats=3))
    assert not g["run_counts"] and not g["met"]
    # An unsustained rate has no p99 to compare; every other figure still meets its goal.
    assert g["ratios_met"] == (workload != "latency")
    [b] = g["broken_rows"]
    assert b["row"].startswith(workload) and "streamflow:defaults" in b["row"]
    assert why in b["why"] and "(repeat 3)" in b["why"]


def test_a_broken_baseline_voids_the_comparison() -> None:
    g = _peers_report.goals(rows({("aiokafka-raw", "map"): {"outputs": N - 1,
                                                              "distinct": N - 1}}))
    assert not g["met"] and g["broken_rows"] == []
    [v] = g["void_comparisons"]
    assert v["row"] == "map aiokafka-raw:at-least-once" and "missing 1 of" in v["why"]


def test_other_rows_problems_are_flagged_but_do_not_decide() -> None:
    g = _peers_report.goals(rows({
        ("faust", "map"): {"capped": True, "outputs": 300, "distinct": 300},  # a slow peer
        ("faust", "join"): {"outputs": N + 5},  # not a row a goal compares with
        ("quix", "latency"): {"sustained": False},
        ("aiokafka-raw", "map"): {"errors": 2, "error_lines": ["[ERROR] x"]},
    }))
    assert g["met"] and g["run_counts"]
    assert {f["row"] for f in g["flagged_rows"]} == {
        "map faust:at-least-once", "join faust:at-least-once",
        "latency @ 1,000/s quix:at-least-once", "map aiokafka-raw:at-least-once"}


@pytest.mark.parametrize(("workload", "field", "value", "failing"), [
    ("map", "records_per_s", 1000.0, "map records/s vs aiokafka-raw"),
    ("map", "cpu_s_per_million", 70.0, "map CPU per record vs quix"),
    ("join", "records_per_s", 7000.0, "join records/s vs quix"),
    ("latency", "p99_ms", 6.5, "latency p99 at 1,000/s vs aiokafka-raw"),
])
def test_ratios_short_of_the_goal_are_not_met_even_when_the_run_counts(
        workload: str, field: str, value: float, failing: str) -> None:
    rs = rows()
    next(r for r in rs if r["workload"] == workload and r["system"] == "streamflow")[
        field] = value
    g = _peers_report.goals(rs)
    assert g["run_counts"] and not g["ratios_met"] and not g["met"]
    assert failing in {c["check"] for c in g["checks"] if not c["ok"]}


def test_the_high_rate_needs_p99_within_100_ms() -> None:
    rs = rows()
    fast = peers._row(("latency", "streamflow", "defaults", 20_000.0), [latency(p99_ms=80.0)])
    assert _peers_report.goals([*rs, {**fast, "version": "v"}])["ratios_met"]
    slow = peers._row(("latency", "streamflow", "defaults", 20_000.0), [latency(p99_ms=140.0)])
    g = _peers_report.goals([*rs, {**slow, "version": "v"}])
    assert not g["ratios_met"]
    assert [c["check"] for c in g["checks"] if not c["ok"]] == [
        "latency p99 ms at 20,000/s, sustained"]


def test_results_say_which_row_and_why(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_peers_report, "chart", lambda rows, path: None)
    args = argparse.Namespace(out=tmp_path, quick=True, repeats=1, records=N)
    summary = _peers_report.write_reports(
        rows({("streamflow", "map"): {"outputs": N - 7, "distinct": N - 7}}), args, 15.0, 60.0)
    assert summary["met"] is False
    assert summary["broken_rows"][0]["row"] == "map streamflow:defaults"
    md = (tmp_path / "results.md").read_text()
    assert "run does NOT count" in md
    assert "**broken StreamFlow row** map streamflow:defaults: missing 7 of 1,000 outputs" in md
    saved = orjson.loads((tmp_path / "results.json").read_bytes())
    bad = next(r for r in saved if r["workload"] == "map" and r["system"] == "streamflow")
    assert bad["problems"][0]["kind"] == "missing"


def _args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    peers.add_arguments(parser)
    return parser.parse_args(list(argv))


def test_repeats_count_under_quick() -> None:
    a = _args("--quick", "--repeats", "3")
    peers.apply_defaults(a)
    assert a.repeats == 3 and a.cap_seconds == 30.0
    q = _args("--quick")
    assert peers.apply_defaults(q) == 15.0 and q.repeats == 1
    f = _args()
    assert peers.apply_defaults(f) == 30.0 and f.repeats == 3


# --- backfill-live, latency -----------------------------------------------------------------

def _ran(hours: tuple[int, int], drop: int = 0, twice: int = 0,
         live: int = 0) -> list[tuple[int, int, bool, str]]:
    ids = sorted(bp.history_ids(*hours))
    ids = ids[drop:] + ids[drop:drop + twice]
    ran = [(0, 1_000_000 * (k + 1), False, i) for k, i in enumerate(ids)]
    return ran + [(5, 6, True, f"live-{j}") for j in range(live)]


def _outputs(ran: list[tuple[int, int, bool, str]], live: int) -> dict[str, Any]:
    """The outputs of these runs, one per run (read back, they count as the runs do)."""
    return backfill_live.output_completion([i for _, _, _, i in ran], live, 2)


@pytest.mark.parametrize(("drop", "twice", "ok"), [(0, 0, True), (1, 0, False), (0, 1, False),
                                                   (1, 1, False)])
def test_backfill_needs_exactly_every_event_once(drop: int, twice: int, ok: bool) -> None:
    ran = _ran((0, 1), drop, twice) + _ran((1, 2), live=10)
    bf, solo = backfill_live.phase(ran, (0, 1)), backfill_live.phase(ran, (1, 2))
    assert bf["want"] == bp.PER_HOUR and bf["completed"] == bp.PER_HOUR - drop
    exactly, problems = backfill_live.accounting(ran, bf, solo, 10, _outputs(ran, 10))
    assert exactly is ok and bool(problems) is not ok
    res = backfill_live._result(
        argparse.Namespace(rate=500.0), Settings(),
        {"idle": [5.0] * 100, "during": [6.0] * 100, "achieved": 500.0, "live_sent": 10},
        bf, solo, exactly, problems)
    assert res["met"] is ok
    assert res["backfill_completed"] == bp.PER_HOUR - drop and res["problems"] == problems


def test_backfill_lost_live_event_or_output_makes_it_not_met() -> None:
    ran = _ran((0, 1)) + _ran((1, 2), live=10)
    bf, solo = backfill_live.phase(ran, (0, 1)), backfill_live.phase(ran, (1, 2))
    assert not backfill_live.accounting(ran, bf, solo, 11, _outputs(ran, 11))[0]
    outs = _outputs(ran, 10)
    outs["solo"] = completion([*sorted(bp.history_ids(1, 2)), "h001-0000"],
                              bp.history_ids(1, 2))
    exactly, problems = backfill_live.accounting(ran, bf, solo, 10, outs)
    assert not exactly and problems == [
        "solo backfill outputs: 2,000 of 2,000 completed, 0 missing, 1 duplicated, "
        "0 unexpected"]


def test_the_window_ends_at_the_last_distinct_event() -> None:
    ran = _ran((0, 1), twice=1)
    ph = backfill_live.phase(ran, (0, 1))
    assert ph["duplicates"] == 1
    assert ph["last_ns"] == 1_000_000 * bp.PER_HOUR  # not the duplicate's, after it


def test_completion_and_exact() -> None:
    want = {"a", "b", "c"}
    assert exact(completion(["a", "b", "c"], want), 3)
    assert not exact(completion(["a", "b", "b"], want), 3)
    assert not exact(completion(["a", "b", "c", "c"], want), 3)
    assert not exact(completion(["a", "b", "c", "d"], want), 3)
    assert completion(["a", "b", "b"], want) == {"completed": 2, "runs": 3, "missing": 1,
                                                  "duplicates": 1, "unexpected": 0}


def test_the_verdict_alone() -> None:
    r = {"workload": "map", "rate": None, "system": "streamflow", "settings": "defaults",
         "problems": [_met.problem("errors", "logged 1 ERROR line(s)", 2)]}
    v = _met.verdict([r], [])
    assert not v["valid"] and v["broken_rows"] == [
        {"row": "map streamflow:defaults", "why": "logged 1 ERROR line(s) (repeat 2)"}]


def soak_figures(**over: Any) -> dict[str, Any]:
    """A flat soak run (one mode) of 2,000,000 records, with ``over`` changed."""
    fig: dict[str, Any] = {
        "records": 2_000_000, "rate_rps": 9_000.0, "calibration_rps": 10_000.0,
        "rss_mb_25pct": 200.0, "rss_mb_100pct": 210.0, "cpu_us_25pct": 80.0,
        "cpu_us_100pct": 82.0, "state_mb_25pct": 5.0, "state_mb_100pct": 5.2,
        "ledger_entries_25pct": 30_000, "ledger_entries_100pct": 31_000,
        "restart_s_25pct": 2.0, "restart_s_100pct": 2.5, "windows_closed": 7_980,
        "full_by_25pct": {"dedupe window": True, "barrier retention": True,
                          "ledger retention": None}, "problems": []}
    fig.update(over)
    return fig


@pytest.mark.parametrize(("change", "why"), [
    ({}, None),
    ({"rss_mb_100pct": 221.0}, "rss_mb grew"),
    ({"cpu_us_100pct": 89.0}, "cpu_us grew"),
    ({"state_mb_100pct": 20.0}, "state_mb grew"),
    ({"ledger_entries_100pct": 120_000}, "ledger_entries grew"),
    ({"ledger_entries_25pct": None, "ledger_entries_100pct": None}, None),
    ({"state_mb_100pct": None}, "state_mb: no figure"),
    ({"restart_s_100pct": 3.1}, "+ 1 s"),
    ({"restart_s_25pct": 4.8, "restart_s_100pct": 5.2}, "> 5 s"),
    ({"restart_s_100pct": None}, "not ready again"),
    ({"rate_rps": 7_999.0}, "below 80%"),
    ({"windows_closed": 4_999}, "windows closed"),
    ({"full_by_25pct": {"dedupe window": False}}, "dedupe window not full"),
    ({"problems": ["enriched: missing 1 of 1,000,000 records"]}, "missing 1"),
])
def test_soak_met(change: dict[str, Any], why: str | None) -> None:
    got = _soak_met.reasons(soak_figures(**change))
    if why is None:
        assert got == []
    else:
        assert len(got) == 1 and why in got[0], got


def test_soak_windows_scale_with_the_records_and_modes_combine_to_the_worse() -> None:
    assert _soak_met.reasons(soak_figures(records=100_000, windows_closed=250)) == []
    assert _soak_met.reasons(soak_figures(records=100_000, windows_closed=249))
    ok, bad = soak_figures(why_not=[]), soak_figures(rss_mb_100pct=300.0, why_not=["rss"])
    top = _soak_met.combine({"alo": ok, "eos": bad})
    assert top["rss_mb_100pct"] == 300.0 and top["restart_s_25pct"] == 2.0
    assert top["met"] is False and _soak_met.combine({"alo": ok})["met"] is True
    assert _soak_met.combine({"alo": ok, "eos": soak_figures(
        ledger_entries_25pct=None, why_not=[])})["ledger_entries_25pct"] is None


def test_soak_window_problems() -> None:
    assert soak_check.window_problems({"w@0": 3}, Counter({"w@0": 1}), {"w@0": 3}) == []
    got = soak_check.window_problems({"w@0": 3, "w@1": 2}, Counter({"w@0": 2, "w@9": 1}),
                                     {"w@0": 2, "w@9": 1})
    assert [g.split(" ")[0:2] for g in got] == [["missing", "1"], ["1", "unexpected"],
                                                ["1", "duplicate"], ["1", "windows"]]
