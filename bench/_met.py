"""When a benchmark run counts: the checks every ``met`` is held to, as pure functions.

A run that lost or duplicated anything, was capped, did not sustain its rate or logged an
error measured a broken system, so its figures prove nothing: ``met`` is false, and the
report says which run and why. The benchmarks feed these functions what they counted; the
unit tests (``tests/test_bench_met.py``) feed them fabricated results.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

# A log record at ERROR or above, in the formats the peers' children write: ours
# ("ERROR name: msg", "2026-.. ERROR name: msg"), Quix's and Faust's ("[ERROR]"), and
# StreamFlow's JSON lines ("level": "error").
_ERROR_LINE = re.compile(r"(?:^|[\s\[|])(?:ERROR|CRITICAL|FATAL)(?:[\]\s:|]|$)"
                         r"|\"level\":\s*\"(?:error|critical)\"")
# Kinds that make a peer's row unfit to be compared with: its figures count work it did not
# do (lost outputs) or did twice, or there are none. Capped, unsustained and logged errors are
# flagged on a peer's row but do not void a comparison.
VOIDING = frozenset({"failed", "missing", "duplicates"})


def problem(kind: str, detail: str, repeat: int | None = None) -> dict[str, Any]:
    return {"kind": kind, "detail": detail, "repeat": repeat}


def error_lines(text: str) -> list[str]:
    """The lines of a log that record an ERROR (or worse)."""
    return [line.strip() for line in text.splitlines() if _ERROR_LINE.search(line)]


def log_errors(path: Path) -> list[str]:
    try:
        return error_lines(path.read_text(errors="replace"))
    except OSError:
        return []


def count_check(expected: int, outputs: int, distinct: int, capped: bool = False,
                what: str = "outputs") -> list[dict[str, Any]]:
    """Loss and duplicates from what was read back: ``outputs`` records, ``distinct`` keys.

    A capped run is not charged with the records it did not reach (the cap is its own
    problem)."""
    out: list[dict[str, Any]] = []
    if distinct < expected and not capped:
        out.append(problem("missing", f"missing {expected - distinct:,} of {expected:,} "
                                      f"{what}"))
    if distinct > expected:
        out.append(problem("missing", f"{distinct - expected:,} unexpected {what} "
                                      f"(more distinct keys than the {expected:,} sent)"))
    if outputs > distinct:
        out.append(problem("duplicates", f"{outputs - distinct:,} duplicate {what}"))
    return out


def run_problems(res: dict[str, Any], latency: bool = False) -> list[dict[str, Any]]:
    """What is wrong with one peers run (a result of ``throughput_run``/``latency_run``)."""
    if res.get("skipped"):
        return []
    if res.get("expected") is None or res.get("outputs") is None:
        return [problem("failed", res.get("note") or "no result")]
    out: list[dict[str, Any]] = []
    if res.get("capped"):
        out.append(problem("capped", "capped before all its outputs were out"))
    outputs = int(res["outputs"])
    distinct = int(res["distinct"]) if res.get("distinct") is not None else outputs
    out += count_check(int(res["expected"]), outputs, distinct, bool(res.get("capped")))
    if latency and not res.get("sustained"):
        out.append(problem("unsustained", "did not sustain its rate"))
    errors = res.get("error_lines") or []
    if errors:
        out.append(problem("errors", f"logged {res.get('errors', len(errors))} ERROR line(s), "
                                     f"first: {str(errors[0])[:200]}"))
    if res.get("exit_status") not in (None, 0):
        out.append(problem("exit", f"child exit status {res['exit_status']}"))
    return out


def row_problems(rs: list[dict[str, Any]], latency: bool) -> list[dict[str, Any]]:
    """Every repeat's problems, each marked with its repeat (1-based)."""
    return [problem(p["kind"], p["detail"], k + 1)
            for k, r in enumerate(rs) for p in run_problems(r, latency)]


def label(row: dict[str, Any]) -> str:
    wl = row["workload"] if row.get("rate") is None else f"latency @ {row['rate']:,.0f}/s"
    return f"{wl} {row['system']}:{row['settings']}"


def describe(problems: Iterable[dict[str, Any]]) -> str:
    return "; ".join(p["detail"] + (f" (repeat {p['repeat']})" if p.get("repeat") else "")
                     for p in problems)


def verdict(rows: list[dict[str, Any]], baselines: list[dict[str, Any]]) -> dict[str, Any]:
    """Whether a peers run counts. Broken StreamFlow rows (any problem) and baselines (the
    rows a goal compares with) that lost, duplicated or failed make it not count; the other
    rows' problems are listed, informational."""
    broken = [{"row": label(r), "why": describe(r["problems"])} for r in rows
              if r["system"] == "streamflow" and r["problems"]]
    base_ids = {id(b) for b in baselines}
    void = [{"row": label(r), "why": describe(p for p in r["problems"]
                                                if p["kind"] in VOIDING)}
            for r in rows if id(r) in base_ids and any(p["kind"] in VOIDING
                                                       for p in r["problems"])]
    flagged = [{"row": label(r), "why": describe(r["problems"])} for r in rows
               if r["system"] != "streamflow" and r["problems"]]
    return {"valid": not broken and not void, "broken_rows": broken,
            "void_comparisons": void, "flagged_rows": flagged}


def completion(ran: Iterable[str], expected: set[str]) -> dict[str, int]:
    """How many of ``expected`` ids ran (``completed``), and what was lost or duplicated."""
    ids = list(ran)
    seen = set(ids)
    return {"completed": len(seen & expected), "runs": len(ids),
            "missing": len(expected - seen), "duplicates": len(ids) - len(seen),
            "unexpected": len(seen - expected)}


def exact(c: dict[str, int], want: int) -> bool:
    """Exactly ``want`` completed: none missing, none twice, nothing else."""
    return (c["completed"] == want and c["missing"] == 0 and c["duplicates"] == 0
            and c["unexpected"] == 0)
