"""A third-party connector package plugs in through its entry point, exactly like built-ins."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import orjson
import pytest
from pydantic import BaseModel

from streamflow import Asset, Pipeline, Settings, run_pipeline
from streamflow.connectors import ConnectorError, build_sink, build_source
from streamflow.connectors.testing import check_sink, check_source

PLUGIN = Path(__file__).resolve().parent.parent / "examples" / "connector-plugin"


class Quote(BaseModel):
    n: int
    author: str
    quote: str


@pytest.fixture(scope="module", autouse=True)
def installed_plugin() -> None:
    """pip install -e is idempotent; entry points are registered at install time."""
    done = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "-e",
                           str(PLUGIN)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    import importlib
    import site
    import sysconfig

    # A package installed after this interpreter started is only importable once its .pth
    # file (the editable install's path entry) is processed: do what startup would have done.
    site.addsitedir(sysconfig.get_paths()["purelib"])
    importlib.invalidate_caches()


def test_connectors_list_shows_the_plugin_with_package_and_version() -> None:
    done = subprocess.run([sys.executable, "-m", "streamflow", "connectors", "list", "--json"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    rows = [r for r in orjson.loads(done.stdout) if r["name"] == "fortune"]
    assert sorted(r["kind"] for r in rows) == ["sink", "source"]
    for r in rows:
        assert (r["package"], r["version"]) == ("streamflow-example-plugin", "0.1.0")
        assert r["class"].startswith("streamflow_example_plugin.")
    source = next(r for r in rows if r["kind"] == "source")
    assert "count" in source["config_schema"]["properties"]


async def test_pipeline_names_the_plugin_by_entry_point(settings: Settings, tmp_path: Path) -> None:
    quotes = Asset("quotes", Quote, key="n")
    p = Pipeline("plugin")
    p.source("fortune", asset=quotes, count=7, batch=3)
    p.sink("fortune", asset=quotes, name="quotes-out", path=tmp_path / "quotes.json")

    summary = await run_pipeline(p, settings)
    assert (summary.records_in, summary.records_out, summary.dead_lettered) == (7, 7, 0)
    stored = orjson.loads((tmp_path / "quotes.json").read_bytes())
    assert sorted(int(v["n"]) for v in stored.values()) == list(range(7))
    assert stored["0"]["author"] == "Heraclitus"

    again = await run_pipeline(p, settings)  # the source resumes after its last ack
    assert again.records_in == 0


async def test_connector_kit_passes_on_the_plugin(tmp_path: Path) -> None:
    report = await check_source(lambda: build_source("fortune", {"count": 10, "batch": 3}),
                                expected_count=10, state_dir=tmp_path / "state")
    assert report.record_ids == [f"fortune:{n}" for n in range(10)]
    target = tmp_path / "out.json"

    def read_back() -> list[dict[str, object]]:
        return list(orjson.loads(target.read_bytes()).values())

    await check_sink(lambda: build_sink("fortune", {"path": target}), read_back=read_back,
                     state_dir=tmp_path / "state",
                     bad_factory=lambda: build_sink("fortune", {"path": tmp_path / "no" / "x"}))


async def test_unknown_connector_fails_at_start_listing_known_names(
    settings: Settings, tmp_path: Path
) -> None:
    quotes = Asset("quotes", Quote, key="n")
    p = Pipeline("unknown")
    p.source("fortunes", asset=quotes, count=1)
    with pytest.raises(ConnectorError) as err:
        await run_pipeline(p, settings)
    msg = str(err.value)
    assert "unknown connector 'fortunes'" in msg
    assert "fortune" in msg.split("known connectors:")[1] and "files" in msg
    assert not (Path(settings.state_dir) / "embedded.db").exists(), "failed before any I/O"
