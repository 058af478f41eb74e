"""OpenLineage run events and ``streamflow lineage``: pure pieces, no broker."""

from __future__ import annotations

import argparse
import logging
import threading
import uuid
from pathlib import Path
from typing import Any

import orjson
import pytest
from openlineage.client import OpenLineageClient
from openlineage.client.transport.transport import Transport

from streamflow.cli._lineage import add_cli, render_tree
from streamflow.model import RunInput, RunRecord
from streamflow.observability._lineage import Lineage, ol_run_id
from streamflow.ops import build_tree, tree_json, what_exists

RUN_OK = "0123456789abcdef0123456789abcdef"
RUN_BAD = "fedcba9876543210fedcba9876543210"


def _run(lin: Lineage, run_id: str, attempt: int, status: str, error: str | None,
         backfill: str = "") -> None:
    common: dict[str, Any] = {
        "stage": "to_usd", "run_id": run_id, "partition": "2026-10-03", "attempt": attempt,
        "mode": "backfill" if backfill else "live", "backfill": backfill,
        "inputs": ["pos_sales", "fx", "pos_sales"], "output": "pos_usd"}
    lin.started(**common, at_ms=1_790_000_000_000)
    lin.ended(**common, at_ms=1_790_000_000_250, status=status, error=error)


def test_run_events_go_to_a_file_one_json_line_each(tmp_path: Path) -> None:
    path = tmp_path / "lineage" / "events.jsonl"
    lin = Lineage.from_target(f"file:{path}", "sf", "retail")
    assert lin is not None
    _run(lin, RUN_OK, 1, "succeeded", None, backfill="bf-1a2b3c")
    _run(lin, RUN_BAD, 2, "dead-lettered", "ZeroDivisionError: division by zero")
    lin.close()  # drains the queue: every event is in the file once it returns
    events = [orjson.loads(line) for line in path.read_text().splitlines()]
    assert [e["eventType"] for e in events] == ["START", "COMPLETE", "START", "FAIL"]
    for e in events:
        assert e["job"] == {**e["job"], "namespace": "streamflow://sf", "name": "retail.to_usd"}
        uuid.UUID(e["run"]["runId"])
        assert [(d["namespace"], d["name"]) for d in e["inputs"]] == [
            ("streamflow://sf", "pos_sales"), ("streamflow://sf", "fx")]
        assert [d["name"] for d in e["outputs"]] == ["pos_usd"]
    ok, bad = events[1]["run"], events[3]["run"]
    assert ok["runId"] == str(uuid.UUID(RUN_OK)) == events[0]["run"]["runId"]
    assert bad["runId"] == ol_run_id(RUN_BAD, 2) != str(uuid.UUID(RUN_BAD))
    assert ok["facets"]["streamflow"] == {**ok["facets"]["streamflow"], "mode": "backfill",
                                          "backfill": "bf-1a2b3c", "run_id": RUN_OK,
                                          "attempt": 1, "status": "succeeded"}
    assert "errorMessage" not in ok["facets"]
    sf = bad["facets"]["streamflow"]
    assert (sf["mode"], sf.get("backfill"), sf["attempt"]) == ("live", None, 2)
    assert bad["facets"]["errorMessage"]["message"] == "ZeroDivisionError: division by zero"
    assert events[0]["eventTime"].startswith("2026-09-21T")


class _Stuck(Transport):
    """Fails every event, after waiting for ``go``."""

    kind = "stuck"

    def __init__(self) -> None:
        self.go = threading.Event()

    def emit(self, event: Any) -> None:
        self.go.wait(5)
        raise ConnectionError("lineage backend down")


def test_a_failing_or_slow_backend_never_raises_and_bounds_the_queue(
    caplog: pytest.LogCaptureFixture,
) -> None:
    transport = _Stuck()
    lin = Lineage(OpenLineageClient(transport=transport), "sf", "retail", max_queued=3)
    with caplog.at_level(logging.WARNING, "streamflow.lineage"):
        for i in range(5):
            _run(lin, f"{i:032x}", 1, "held", "gate held partition 2026-10-03")
        transport.go.set()
        lin.close()
    assert lin.emitted == 0 and lin.failed + lin.dropped == 10 and lin.dropped >= 6
    down = [r for r in caplog.records if "lineage backend down" in r.getMessage()]
    assert len(down) == 1  # at most once a minute
    assert any("dropping" in r.getMessage() for r in caplog.records)


def test_status_maps_to_the_openlineage_event_type(tmp_path: Path) -> None:
    lin = Lineage.from_target(f"file:{tmp_path / 'e.jsonl'}", "sf", "p")
    assert lin is not None
    lin.close()
    item = (False, "s", RUN_OK, "p", 1, "live", "", ("a",), None, 0)
    got = {status: lin.event((*item, status, None)) for status in (
        "succeeded", "retrying", "dead-lettered", "held", "skipped", "parked", "released")}
    assert {k: e.eventType.value for k, e in got.items() if e.eventType} == {
        "succeeded": "COMPLETE", "retrying": "FAIL", "dead-lettered": "FAIL", "held": "FAIL",
        "skipped": "ABORT", "parked": "OTHER", "released": "OTHER"}
    facets = got["held"].run.facets or {}
    assert "quality gate" in facets["errorMessage"].message  # type: ignore[attr-defined]
    assert got["succeeded"].outputs == []


@pytest.mark.parametrize("bad", ["kafka://broker:9092", "file:", "http://", "marquez", "ftp:x"])
def test_a_malformed_target_names_the_setting_and_the_forms(bad: str) -> None:
    with pytest.raises(ValueError, match=r"STREAMFLOW_LINEAGE=.*file:PATH, http\(s\)://URL"):
        Lineage.from_target(bad, "sf", "p")


def test_no_target_means_no_lineage() -> None:
    assert Lineage.from_target(None, "sf", "p") is None
    assert Lineage.from_target("  ", "sf", "p") is None


# -- streamflow lineage ---------------------------------------------------------------------

def _rec(run_id: str, stage: str, partition: str, output: str, inputs: list[tuple[str, str]],
         outputs: list[str], status: str = "succeeded", mode: str = "live",
         backfill: str | None = None, attempt: int = 1, ended: int = 0) -> RunRecord:
    return RunRecord(
        run_id=run_id, stage=stage, partition=partition, status=status,  # type: ignore[arg-type]
        attempt=attempt, max_attempts=3, started_ms=ended, ended_ms=ended, mode=mode,
        inputs=[RunInput(asset=a, partition=partition, version=1, arrival_id=aid)
                for a, aid in inputs],
        outputs=outputs, backfill=backfill, output=output)


def _ledger() -> list[RunRecord]:
    """pos_sales (source) -> to_usd -> pos_usd -> pos_daily -> pos_day ->
    daily_report (with online_day, a source) -> daily_sales."""
    day = "2026-10-03"
    return [
        _rec("u1", "to_usd", day, "pos_usd", [("pos_sales", "s1")], ["o1"], ended=1),
        _rec("u2", "to_usd", day, "pos_usd", [("pos_sales", "s2")], [], status="retrying",
             mode="backfill", backfill="bf-1", ended=2),
        _rec("u3", "to_usd", day, "pos_usd", [("pos_sales", "s3")], ["o3"], mode="backfill",
             backfill="bf-1", ended=3),
        # u2's second attempt, later in the log: the latest record of a run wins
        _rec("u2", "to_usd", day, "pos_usd", [("pos_sales", "s2")], ["o2"], mode="backfill",
             backfill="bf-1", attempt=2, ended=4),
        _rec("d1", "pos_daily", day, "pos_day", [("pos_usd", "o1"), ("pos_usd", "o2"),
                                                  ("pos_usd", "o3")], ["p1"], ended=5),
        _rec("r1", "daily_report", day, "daily_sales", [("pos_day", "p1"),
                                                        ("online_day", "w1")], ["x1"], ended=6),
        _rec("other", "to_usd", "2026-10-04", "pos_usd", [("pos_sales", "s9")], ["o9"]),
    ]


def test_the_upstream_tree_walks_arrival_ids_down_to_the_sources() -> None:
    tree = build_tree(_ledger(), "daily_sales", "2026-10-03")
    assert tree is not None
    j = tree_json(tree)
    (report,) = j["stages"]
    assert (report["stage"], report["count"], report["statuses"]) == (
        "daily_report", 1, {"succeeded": 1})
    assert report["inputs"] == [{"asset": "online_day", "version": 1},
                                {"asset": "pos_day", "version": 1}]
    online, pos_day = report["upstream"]
    assert (online["asset"], online["source"], online["stages"]) == ("online_day", True, [])
    assert (pos_day["asset"], pos_day["source"]) == ("pos_day", False)
    (daily,) = pos_day["stages"]
    assert daily["stage"] == "pos_daily"
    (pos_usd,) = daily["upstream"]
    (usd,) = pos_usd["stages"]
    assert (usd["stage"], usd["count"], usd["statuses"]) == ("to_usd", 3, {"succeeded": 3})
    assert (usd["modes"], usd["backfills"]) == ({"backfill": 2, "live": 1}, {"bf-1": 2})
    (sales,) = usd["upstream"]
    assert (sales["asset"], sales["partition"], sales["source"]) == (
        "pos_sales", "2026-10-03", True)
    text = render_tree(tree)
    assert text[0] == "daily_sales / 2026-10-03"
    assert any("stage to_usd: 3 runs (succeeded 3) · backfill 2 (bf-1) · live 1" in t
               for t in text)
    assert text[-1].endswith("pos_sales / 2026-10-03  ← source")
    runs = tree_json(tree, with_runs=True)["stages"][0]["runs"]
    assert [r["run_id"] for r in runs] == ["r1"]
    assert any("run u2 succeeded 2/3 backfill bf-1" in t for t in render_tree(tree, True))


def test_cycles_and_depth_stop_the_walk() -> None:
    loop = [_rec("a", "s", "p", "x", [("x", "o2")], ["o1"]),
            _rec("b", "s", "p", "x", [("x", "o1")], ["o2"])]
    tree = build_tree(loop, "x", "p")
    assert tree is not None
    assert tree_json(tree)["stages"][0]["upstream"][0]["stop"] == "cycle"
    shallow = build_tree(_ledger(), "daily_sales", "2026-10-03", max_depth=1)
    assert shallow is not None
    assert [u["stop"] for u in tree_json(shallow)["stages"][0]["upstream"]] == [
        None, "depth-limit"]


def test_nothing_matches_says_what_the_ledger_has(capsys: pytest.CaptureFixture[str],
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    ledger = _ledger()
    assert "pos_usd has partitions 2026-10-03, 2026-10-04" in what_exists(
        ledger, "pos_usd", "2026-10-05")
    assert "outputs for: daily_sales (2026-10-03); pos_day" in what_exists(
        ledger, "nope", "x")
    assert "ledger is empty" in what_exists([], "nope", "x")

    async def runs(settings: Any) -> list[RunRecord]:
        return ledger

    monkeypatch.setattr("streamflow.cli._lineage.list_runs", runs)
    parser = argparse.ArgumentParser()
    add_cli(parser.add_subparsers())
    args = parser.parse_args(["lineage", "nope", "2026-10-03"])
    assert args.func(args) == 1
    assert "no run in the ledger produced nope / 2026-10-03" in capsys.readouterr().err
    args = parser.parse_args(["lineage", "pos_day", "2026-10-03", "--json"])
    assert args.func(args) == 0
    assert orjson.loads(capsys.readouterr().out)["stages"][0]["stage"] == "pos_daily"
