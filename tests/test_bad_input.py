"""Bad input never stops a pipeline and is never lost: dead letters and quarantine."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import orjson
from streamflow_connector_files import read_rows

from streamflow import Asset, Pipeline, Settings, run_pipeline

from .helpers import read_topic, values
from .pipelines.echo import Person


def _aged(path: Path, body: bytes) -> None:
    path.write_bytes(body)
    os.utime(path, (time.time() - 5, time.time() - 5))


def echo_pipeline(workdir: Path) -> Pipeline:
    people = Asset("people", Person, key="id")
    shouted = Asset("shouted", Person, key="id")
    p = Pipeline("bad-input")
    p.source("files", asset=people, path=workdir / "landing", format="jsonl", settle_s=0)

    @p.stage(inputs=[people], output=shouted)
    def shout(x: Person) -> Person:
        return Person(id=x.id, name=x.name.upper())

    p.sink("files", asset=shouted, path=workdir / "out")
    return p


async def test_unreadable_files_go_to_quarantine_with_reason(
    settings: Settings, tmp_path: Path
) -> None:
    landing = tmp_path / "landing"
    landing.mkdir()
    _aged(landing / "good.jsonl", b'{"id": 1, "name": "ada"}\n{"id": 2, "name": "bob"}\n')
    _aged(landing / "binary.jsonl", b"\xff\xfe\x00garbage\x81")
    _aged(landing / "still-writing.jsonl.part", b'{"id": 9, "name": "zed"}\n')

    summary = await run_pipeline(echo_pipeline(tmp_path), settings)

    assert (summary.records_in, summary.records_out, summary.dead_lettered) == (2, 2, 0)
    q = landing / "quarantine"
    assert sorted(p.name for p in q.iterdir()) == ["binary.jsonl", "binary.jsonl.reason.txt"]
    reason = (q / "binary.jsonl.reason.txt").read_text()
    assert "cannot read binary.jsonl" in reason and "utf-8" in reason
    assert [p.name for p in (landing / "processed").iterdir()] == ["good.jsonl"]
    assert (landing / "still-writing.jsonl.part").exists(), "a file being written is not read"


async def test_bad_rows_dead_letter_and_good_rows_flow(settings: Settings, tmp_path: Path) -> None:
    landing = tmp_path / "landing"
    landing.mkdir()
    _aged(landing / "mixed.jsonl", b"\n".join([
        b'{"id": 1, "name": "ada"}',
        b'{"id": "one", "name": "bob"}',   # contract violation
        b'{"id": 3, "name": ',              # not JSON
        b'[1, 2]',                          # not an object
        b'{"id": 5, "name": "eve"}',
    ]) + b"\n")

    summary = await run_pipeline(echo_pipeline(tmp_path), settings)

    assert (summary.records_in, summary.records_out, summary.dead_lettered) == (5, 2, 3)
    out = read_rows(tmp_path / "out")
    assert sorted(str(r["name"]) for r in out) == ["ADA", "EVE"]
    dead = sorted(values(await read_topic(settings, settings.dead_letter_topic)),
                  key=lambda v: v["origin"]["line"])  # type: ignore[index]
    assert [d["origin"] for d in dead] == [
        {"file": "mixed.jsonl", "line": n} for n in (2, 3, 4)]
    assert "field 'id'" in str(dead[0]["reason"]) and "'one'" in str(dead[0]["reason"])
    assert "invalid JSON" in str(dead[1]["reason"])
    assert "not a JSON object" in str(dead[2]["reason"])
    assert (landing / "processed" / "mixed.jsonl").exists()


def test_ctrl_c_drains_in_flight_work_and_exits_zero(settings: Settings, tmp_path: Path,
                                                     repo_root: Path) -> None:
    landing = tmp_path / "landing"
    landing.mkdir()
    env = {**os.environ, "ECHO_WORKDIR": str(tmp_path), "ECHO_WATCH": "1",
           "STREAMFLOW_NAMESPACE": settings.namespace,
           "STREAMFLOW_STATE_DIR": str(settings.state_dir)}
    env.pop("STREAMFLOW_KAFKA_BOOTSTRAP", None)
    if settings.kafka_bootstrap:
        env["STREAMFLOW_KAFKA_BOOTSTRAP"] = settings.kafka_bootstrap
    proc = subprocess.Popen(
        [sys.executable, "-m", "streamflow", "run", "tests/pipelines/echo.py:pipeline", "--json"],
        cwd=repo_root, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        rows = b"".join(b'{"id": %d, "name": "n%d"}\n' % (i, i) for i in range(200))
        (landing / "batch.jsonl.tmp").write_bytes(rows)
        os.replace(landing / "batch.jsonl.tmp", landing / "batch.jsonl")
        deadline = time.time() + 60
        while time.time() < deadline and not (landing / "processed" / "batch.jsonl").exists():
            time.sleep(0.05)
        assert (landing / "processed" / "batch.jsonl").exists(), "watching source never read it"
        proc.send_signal(signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=90)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, stderr
    summary = orjson.loads(stdout.strip().splitlines()[-1])
    assert summary["records_in"] == 200 and summary["drained"] is True
    assert summary["records_out"] == 200, "in-flight work was drained before exit"
    out = read_rows(tmp_path / "out")
    assert sorted(int(r["id"]) for r in out) == list(range(200))


async def test_foreign_garbage_on_asset_topics_is_dead_lettered(
    settings: Settings, tmp_path: Path
) -> None:
    from streamflow.model import OutMessage
    from streamflow.transports import make_transport

    ns = settings.namespace
    transport = make_transport(settings)
    await transport.start()
    await transport.ensure_topics([f"{ns}.people", f"{ns}.shouted"])
    await transport.publish([
        OutMessage(f"{ns}.people", b"\xff\x00 not json", None, [("sf-contract-version", b"x")]),
        OutMessage(f"{ns}.shouted", b"[1, 2, 3]", b"k", []),
    ])
    await transport.close()
    landing = tmp_path / "landing"
    landing.mkdir()
    _aged(landing / "ok.jsonl", b'{"id": 7, "name": "ok"}\n')

    summary = await run_pipeline(echo_pipeline(tmp_path), settings)

    assert (summary.records_out, summary.dead_lettered) == (1, 2)
    dead = values(await read_topic(settings, settings.dead_letter_topic))
    by_stage = {str(d["stage"]): d for d in dead}
    assert set(by_stage) == {"shout", "files-shouted"}
    assert by_stage["shout"]["origin"]["topic"] == f"{ns}.people"  # type: ignore[index]
    assert "Invalid JSON" in str(by_stage["shout"]["reason"])
    assert "expected a JSON object" in str(by_stage["files-shouted"]["reason"])


async def test_a_failing_sink_parks_its_batch_in_dead_letters(
    settings: Settings, tmp_path: Path
) -> None:
    from streamflow.connectors import ConnectorContext, SinkRecord

    people = Asset("people", Person, key="id")

    class BrokenSink:
        location = "nowhere"

        async def setup(self, ctx: ConnectorContext) -> None: ...
        async def write(self, records: list[SinkRecord]) -> None:
            raise ConnectionError("database unreachable after 5 attempts")
        async def flush(self) -> None: ...
        async def stop(self) -> None: ...

    p = Pipeline("broken-sink")
    p.source("files", asset=people, path=tmp_path / "landing", format="jsonl", settle_s=0)
    p.sink(BrokenSink(), asset=people)
    (tmp_path / "landing").mkdir()
    _aged(tmp_path / "landing" / "a.jsonl", b'{"id": 1, "name": "a"}\n{"id": 2, "name": "b"}\n')

    summary = await run_pipeline(p, settings)
    assert (summary.records_out, summary.dead_lettered, summary.drained) == (0, 2, True)
    dead = values(await read_topic(settings, settings.dead_letter_topic))
    assert sorted(orjson.loads(str(d["payload"]))["id"] for d in dead) == [1, 2]
    assert all("database unreachable" in str(d["reason"]) for d in dead)
    assert all(d["error"]["type"] == "ConnectionError" for d in dead)  # type: ignore[index]


async def test_odd_but_legal_files_read_right_and_malformed_ones_dead_letter(
    settings: Settings, tmp_path: Path
) -> None:
    """A byte-order mark opens a CSV and a JSON Lines file; U+2028 and U+0085 sit inside
    strings; lines end in CRLF. A duplicate name and a quote never closed are dead-lettered."""
    people = Asset("people", Person, key="id")
    landing, out = tmp_path / "landing", tmp_path / "out"
    landing.mkdir()
    (landing / "csv").mkdir()
    _aged(landing / "csv" / "bom.csv",
          b'\xef\xbb\xbfid,name\r\n1,ada\r\n2,"b\xe2\x80\xa8ob"\r\n3,"cy\r\n4,di\r\n')
    _aged(landing / "bom.jsonl", "\ufeff".encode() + '{"id": 5, "name": "e\u2028v\u0085e"}\r\n'
          '{"id": 6, "id": 7, "name": "fay"}\n{"id": 8, "name": "gus"}'.encode())
    p = Pipeline("odd-files")
    p.source("files", asset=people, path=landing / "csv", format="csv", settle_s=0,
             name="csv-src")
    p.source("files", asset=people, path=landing, format="jsonl", settle_s=0,
             pattern="*.jsonl", name="jsonl-src")
    p.sink("files", asset=people, path=out)

    summary = await run_pipeline(p, settings)

    assert (summary.records_in, summary.records_out, summary.dead_lettered) == (6, 4, 2)
    names = {int(str(r["id"])): r["name"] for r in read_rows(out)}
    assert names == {1: "ada", 2: "b\u2028ob", 5: "e\u2028v\u0085e", 8: "gus"}
    dead = sorted(values(await read_topic(settings, settings.dead_letter_topic)),
                  key=lambda d: str(d["origin"]))
    assert [d["origin"] for d in dead] == [{"file": "bom.csv", "line": 4},
                                           {"file": "bom.jsonl", "line": 2}]
    assert "bom.csv line 4: malformed CSV: a quoted field opened on this line is never " \
        "closed" in str(dead[0]["reason"])
    assert dead[0]["payload"] == '3,"cy\r\n4,di\r\n'
    assert "bom.jsonl line 2: the name 'id' appears twice" in str(dead[1]["reason"])
