"""The stdout sink: one JSON document per record, printed at flush, in process and via the CLI."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import orjson
import pytest

from streamflow import Settings
from streamflow.connectors import ConnectorContext, ConnectorError, SinkRecord, build_sink

RECORDS = [
    SinkRecord("1", "a1", "1", {"id": 1, "name": "ada"}),
    SinkRecord(None, "a2", "default", {"id": 2, "name": "bob", "tags": ["x"]}),
]


async def test_lines_appear_at_flush_not_before(capsys: pytest.CaptureFixture[str]) -> None:
    sink = build_sink("stdout", {})
    assert sink.location == "stdout"
    await sink.setup(ConnectorContext("stdout-people", "people", "/nonexistent"))
    await sink.write(RECORDS)
    assert capsys.readouterr().out == "", "nothing is printed before flush"
    await sink.flush()
    lines = capsys.readouterr().out.splitlines()
    assert [orjson.loads(x) for x in lines] == [r.value for r in RECORDS]
    await sink.stop()
    assert capsys.readouterr().out == ""


async def test_metadata_and_pretty(capsys: pytest.CaptureFixture[str]) -> None:
    sink = build_sink("stdout", {"pretty": True, "include_metadata": True})
    await sink.setup(ConnectorContext("s", "people", "/nonexistent"))
    await sink.write(RECORDS[:1])
    await sink.stop()  # stop flushes what is left
    out = capsys.readouterr().out
    assert out.count("\n") > 2, "pretty output is indented over several lines"
    assert orjson.loads(out) == {"id": 1, "name": "ada", "_key": "1", "_arrival_id": "a1",
                                 "_partition": "1"}


def test_misspelt_setting_is_named() -> None:
    with pytest.raises(ConnectorError, match=r"'indent'.*pretty, include_metadata"):
        build_sink("stdout", {"indent": 2})


def test_cli_prints_one_json_line_per_record(
    settings: Settings, tmp_path: Path, repo_root: Path
) -> None:
    landing = tmp_path / "landing"
    landing.mkdir()
    (landing / "people.jsonl").write_bytes(
        b"".join(b'{"id": %d, "name": "n%d"}\n' % (i, i) for i in range(25)))
    old = time.time() - 5
    os.utime(landing / "people.jsonl", (old, old))
    env = {**os.environ, "ECHO_WORKDIR": str(tmp_path), "STDOUT_META": "1",
           "STREAMFLOW_NAMESPACE": settings.namespace,
           "STREAMFLOW_STATE_DIR": str(settings.state_dir)}
    env.pop("STREAMFLOW_KAFKA_BOOTSTRAP", None)
    if settings.kafka_bootstrap:
        env["STREAMFLOW_KAFKA_BOOTSTRAP"] = settings.kafka_bootstrap
    proc = subprocess.run(
        [sys.executable, "-m", "streamflow", "run", "tests/pipelines/to_stdout.py:pipeline",
         "--json"],
        cwd=repo_root, env=env, capture_output=True, text=True, timeout=180,
    )
    assert proc.returncode == 0, proc.stderr
    *records, summary_line = proc.stdout.strip().splitlines()
    summary = orjson.loads(summary_line)
    assert summary["records_out"] == 25 and summary["outputs"] == {"stdout-people": "stdout"}
    rows = [orjson.loads(x) for x in records]
    assert sorted(r["id"] for r in rows) == list(range(25))
    assert all(r["_key"] == str(r["id"]) and r["_partition"] == str(r["id"]) for r in rows)
