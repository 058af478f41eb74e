"""When a soak run is ``met``, as pure functions of its figures (``tests/test_bench_met.py``
feeds them fabricated ones).

Issue 17: every 100% figure within 1.1x of its 25% figure (RSS, CPU per record, live state
bytes, ledger entries read at start when known); restart at 100% at most the 25% figure plus
1 s and at most 5 s; the run's rate at least 80% of the calibration's; at least 5,000 windows
closed (scaled to the records asked); every bounded structure full by the 25% mark; nothing
lost, duplicated, dead-lettered or logged as an ERROR.
"""

from __future__ import annotations

from typing import Any

GROWTH = 1.1
RESTART_SLACK_S = 1.0
RESTART_MAX_S = 5.0
RATE_SHARE = 0.8
WINDOWS_AT_2M = 5000
FULL_RECORDS = 2_000_000
FLAT = ("rss_mb", "cpu_us", "state_mb", "ledger_entries")


def windows_required(records: int) -> int:
    return WINDOWS_AT_2M * records // FULL_RECORDS


def reasons(fig: dict[str, Any]) -> list[str]:
    """Why a run's figures (one mode) do not meet the target: empty when they do."""
    out: list[str] = []
    for name in FLAT:
        a, b = fig.get(f"{name}_25pct"), fig.get(f"{name}_100pct")
        if a is None or b is None:
            if name != "ledger_entries":  # null when neither the gauge nor a count had it
                out.append(f"{name}: no figure (25%: {a}, 100%: {b})")
            continue
        if b > GROWTH * a:
            out.append(f"{name} grew {b / a if a else float('inf'):.2f}x from 25% ({a:g}) "
                       f"to 100% ({b:g}), over {GROWTH}x")
    r25, r100 = fig.get("restart_s_25pct"), fig.get("restart_s_100pct")
    if r25 is None or r100 is None:
        out.append(f"restart: the worker was not ready again (25%: {r25}, 100%: {r100})")
    else:
        if r100 > r25 + RESTART_SLACK_S:
            out.append(f"restart at 100% {r100:.2f} s > 25% {r25:.2f} s + {RESTART_SLACK_S:g} s")
        if r100 > RESTART_MAX_S:
            out.append(f"restart at 100% {r100:.2f} s > {RESTART_MAX_S:g} s")
    rate, cal = fig.get("rate_rps"), fig.get("calibration_rps")
    if not rate or not cal or rate < RATE_SHARE * cal:
        out.append(f"rate {rate} records/s below {RATE_SHARE:.0%} of the calibration's {cal}")
    closed, records = fig.get("windows_closed", 0), int(fig.get("records", 0))
    if closed < windows_required(records):
        out.append(f"{closed} windows closed, fewer than {windows_required(records)}")
    out += [f"{what} not full by the 25% mark" for what, full
            in (fig.get("full_by_25pct") or {}).items() if full is False]
    out += list(fig.get("problems") or [])
    return out


def combine(runs: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The top-level figures of one or more modes: each the worse (higher) of the modes', and
    met only when every mode is met."""
    keys = [f"{n}_{p}" for n in (*FLAT, "restart_s") for p in ("25pct", "100pct")]
    out: dict[str, Any] = {}
    for k in keys:
        vals = [r.get(k) for r in runs.values()]
        nums = [float(v) for v in vals if v is not None]
        out[k] = max(nums) if nums and len(nums) == len(vals) else None
    out["met"] = all(not r["why_not"] for r in runs.values())
    return out
