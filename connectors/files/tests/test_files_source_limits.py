"""The files source's edges: symbolic links that leave the landing folder, and files above
``max_file_bytes``, are quarantined with a reason and never read; the run goes on."""

from __future__ import annotations

import os
import time
import tracemalloc
from pathlib import Path

import pytest
from pydantic import BaseModel
from streamflow_connector_files import FilesSource, FilesSourceConfig, read_rows

from streamflow import Asset, Pipeline, Settings, run_pipeline


class Row(BaseModel):
    id: str
    note: str


def _land(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    old = time.time() - 5
    os.utime(path, (old, old))


def _pipeline(tmp_path: Path, **source: object) -> Pipeline:
    rows = Asset("rows", Row, key="id")
    p = Pipeline("files-limits")
    p.source("files", asset=rows, path=tmp_path / "landing", settle_s=0, **source)
    p.sink("files", asset=rows, path=tmp_path / "out", name="out")
    return p


async def test_links_out_of_the_folder_and_oversized_files_are_quarantined(
    settings: Settings, tmp_path: Path
) -> None:
    landing = tmp_path / "landing"
    _land(tmp_path / "secret.csv", "id,note\ns1,outside-the-landing-folder\n")
    _land(landing / "good.csv", "id,note\ng1,fine\n")
    _land(landing / "inner" / "kept.csv", "id,note\nk1,linked from inside\n")
    _land(landing / "big.csv", "id,note\n" + "".join(f"b{i},{'x' * 50}\n" for i in range(40)))
    os.symlink("../secret.csv", landing / "relative-out.csv")
    os.symlink(tmp_path / "secret.csv", landing / "absolute-out.csv")
    os.symlink("inner/kept.csv", landing / "inside.csv")

    summary = await run_pipeline(_pipeline(tmp_path, max_file_bytes=1024), settings)

    got = {r["id"] for r in read_rows(tmp_path / "out")}
    assert got == {"g1", "k1"}, got
    assert summary.records_in == 2
    q = landing / "quarantine"
    for name in ("relative-out.csv", "absolute-out.csv"):
        reason = (q / f"{name}.reason.txt").read_text()
        assert f"{name}: a symbolic link to {(tmp_path / 'secret.csv').resolve()}" in reason
        assert "outside the landing folder" in reason
        assert (q / name).is_symlink()  # the link moved, its target untouched
    assert (tmp_path / "secret.csv").read_text().startswith("id,note")
    reason = (q / "big.csv.reason.txt").read_text()
    size = (q / "big.csv").stat().st_size
    assert f"big.csv: {size} bytes, above max_file_bytes (1024); not read" in reason
    assert (landing / "processed" / "inside.csv").is_symlink()


def test_an_oversized_file_is_refused_before_it_is_read(tmp_path: Path) -> None:
    """Refused on its size: a sparse 64 MiB file costs no memory to refuse."""
    landing = tmp_path / "landing"
    landing.mkdir()
    huge = landing / "huge.jsonl"
    with huge.open("wb") as fh:
        fh.truncate(64 * 1024 * 1024)
    source = FilesSource(FilesSourceConfig(path=landing, format="jsonl",
                                           max_file_bytes=1024 * 1024))
    tracemalloc.start()
    try:
        got = source._load(huge)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert got == f"huge.jsonl: {64 * 1024 * 1024} bytes, above max_file_bytes (1048576); not read"
    assert peak < 1024 * 1024, peak


@pytest.mark.parametrize("limit", [0, -1])
def test_max_file_bytes_must_be_positive(tmp_path: Path, limit: int) -> None:
    with pytest.raises(ValueError, match="max_file_bytes"):
        FilesSourceConfig(path=tmp_path, max_file_bytes=limit)
