"""The connector kit (``streamflow.connectors.testing``) on the files source and sink.

The contract every connector meets: lifecycle, deterministic ids on re-read, checkpoint and
resume, idempotent redelivery, and a clear error from a misconfigured sink."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import pytest
from streamflow_connector_files import read_rows

from streamflow.connectors import build_sink, build_source
from streamflow.connectors.testing import check_sink, check_source


def _aged(path: Path, body: bytes) -> None:
    path.write_bytes(body)
    os.utime(path, (time.time() - 5, time.time() - 5))


async def test_kit_files_source(tmp_path: Path) -> None:
    landing = tmp_path / "landing"

    def seed() -> None:
        landing.mkdir()
        for f, n in (("a.jsonl", 3), ("b.jsonl", 2), ("c.jsonl", 2)):
            _aged(landing / f, b"".join(b'{"id": %d}\n' % i for i in range(n)))

    report = await check_source(
        lambda: build_source("files", {"path": landing, "format": "jsonl", "settle_s": 0}),
        expected_count=7, state_dir=tmp_path / "state", seed=seed)
    assert len(report.first_batch) == 3


@pytest.mark.parametrize("mode", ["append", "rewrite", "append-parts"])
async def test_kit_files_sink(tmp_path: Path, mode: str) -> None:
    out = tmp_path / "out"

    def read_back() -> list[dict[str, Any]]:
        return read_rows(out)  # the documented rule: the latest row per _key

    (tmp_path / "a-file").write_text("not a directory")
    await check_sink(lambda: build_sink("files", {"path": out, "mode": mode}), read_back=read_back,
                     state_dir=tmp_path / "state",
                     bad_factory=lambda: build_sink("files", {"path": tmp_path / "a-file" / "x"}))
