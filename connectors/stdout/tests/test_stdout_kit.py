"""The connector kit (``streamflow.connectors.testing``) on the stdout sink.

The contract every connector meets: lifecycle, deterministic ids on re-read, checkpoint and
resume, idempotent redelivery, and a clear error from a misconfigured sink."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest

from streamflow.connectors import build_sink
from streamflow.connectors.testing import check_sink


async def test_kit_stdout_sink(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """stdout is at-least-once by design: read_back dedupes by arrival id, as a reader must."""
    printed: list[str] = []

    def read_back() -> list[dict[str, Any]]:
        printed.extend(capsys.readouterr().out.splitlines())
        latest = {}
        for line in printed:
            row = orjson.loads(line)
            latest[row["_arrival_id"]] = row
        return list(latest.values())

    await check_sink(lambda: build_sink("stdout", {"include_metadata": True}),
                     read_back=read_back, state_dir=tmp_path / "state")
    assert len(printed) > 6, "a redelivered record is printed again (documented)"
