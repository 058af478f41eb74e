"""The connector kit (``streamflow.connectors.testing``) on the interval and cron sources.

The contract every connector meets: lifecycle, deterministic ids on re-read, checkpoint and
resume, idempotent redelivery, and a clear error from a misconfigured sink."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from streamflow.connectors import build_source
from streamflow.connectors.testing import check_source


@pytest.mark.parametrize("connector, config", [
    ("interval", {"every_s": 60}),
    ("cron", {"schedule": "*/5 * * * *"}),
])
async def test_kit_schedule_sources(tmp_path: Path, connector: str, config: dict[str, Any]
                                    ) -> None:
    """Ticks from a fixed past start are deterministic; count makes the source finite."""
    cfg = {**config, "start": "2026-01-01T00:00:00Z", "count": 4, "catch_up": True}
    report = await check_source(lambda: build_source(connector, cfg), expected_count=4,
                                state_dir=tmp_path / "state", name=f"kit-{connector}")
    assert report.record_ids[0].endswith("2026-01-01T00:00:00+00:00")
