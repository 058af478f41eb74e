"""Chaos fixtures: the seed (printed, overridable), PostgreSQL, and the shared JSON report."""

from __future__ import annotations

import json
import os
import random
import time
from pathlib import Path
from typing import Any

import pytest


@pytest.fixture(scope="session")
def chaos_seed() -> int:
    raw = os.environ.get("STREAMFLOW_CHAOS_SEED", "").strip()
    seed = int(raw) if raw else random.SystemRandom().randrange(1, 2**31)
    print(f"\nchaos seed: {seed} (STREAMFLOW_CHAOS_SEED={seed} replays it)")
    return seed


@pytest.fixture(scope="session")
def pg_dsn() -> str:
    from streamflow import devservices as services

    services.up(["postgres"])
    return services.POSTGRES_DSN


def write_report(section: str | None, data: dict[str, Any]) -> None:
    """Merge one transport's outcome into $STREAMFLOW_CHAOS_REPORT: Kafka at the top level
    (``section`` None), the embedded transport under ``"embedded"``."""
    path = os.environ.get("STREAMFLOW_CHAOS_REPORT")
    if not path:
        return
    p = Path(path)
    try:
        report: dict[str, Any] = json.loads(p.read_text()) if p.exists() else {}
    except ValueError:
        report = {}
    if section is None:
        report.update(data)
    else:
        report[section] = data
    report["written_at"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(json.dumps(report, indent=2, sort_keys=True) + "\n")
