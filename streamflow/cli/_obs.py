"""``streamflow status`` (a running worker's view) and ``streamflow trace`` (one record's path)."""

from __future__ import annotations

import argparse
import os
import urllib.error
import urllib.request
from typing import Any

import orjson

from streamflow.errors import OpsError

from ._trace import add_trace_cli


def add_cli(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    st = sub.add_parser(
        "status", help="stages, lag, open barriers and recent failures of a running worker",
        description="Ask a running worker (its /status route) for its stages, consumer lag, "
        "open barriers and recent failures.")
    st.add_argument("--url", default="http://127.0.0.1:9464",
                    help="the worker's HTTP address (default http://127.0.0.1:9464)")
    st.add_argument("--json", action="store_true", help="print the raw JSON (a worker with a "
                    "token: set STREAMFLOW_HTTP_TOKEN here too)")
    st.set_defaults(func=_status)
    add_trace_cli(sub)


def fetch_json(url: str, what: str, hint: str, token: str | None = None) -> Any:
    """``token``: sent as a bearer token (a worker port with STREAMFLOW_HTTP_TOKEN)."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers),
                                    timeout=10) as resp:
            return orjson.loads(resp.read())
    except urllib.error.HTTPError as e:
        raise OpsError(f"{what} at {url} answered {e.code}: {e.read()[:200]!r}") from e
    except (urllib.error.URLError, OSError) as e:
        raise OpsError(f"cannot reach {what} at {url} ({getattr(e, 'reason', e)}). {hint}") from e


def _status(args: argparse.Namespace) -> int:
    url = args.url.rstrip("/") + "/status"
    st = fetch_json(url, "the worker", "Is a worker running (`streamflow run …`)? Pass "
                    "--url if it uses another --http-port.",
                    token=os.environ.get("STREAMFLOW_HTTP_TOKEN") or None)
    if args.json:
        print(orjson.dumps(st, option=orjson.OPT_INDENT_2).decode())
        return 0
    print(f"pipeline {st['pipeline']!r} on {st['transport']}: {st['phase']}"
          f"{'' if st['ready'] else ' (not ready: ' + st['reason'] + ')'},"
          f" up {st['uptime_s']:.0f}s")
    print(f"{'STAGE/SINK':<24} {'KIND':<6} {'LAG':>7} {'OPEN':>5} {'OLDEST':>8}  RUNS")
    for name, e in sorted(st["stages"].items()):
        runs = ", ".join(f"{k} {v}" for k, v in sorted(e["runs"].items())) or "-"
        if e.get("dead_lettered"):
            runs += f"; dead-lettered {e['dead_lettered']}"
        if e.get("held_partitions"):
            runs += f"; HELD {e['held_partitions']} (`streamflow runs list --status held`)"
        opened = e.get("open_barriers")
        oldest = e.get("oldest_open_barrier_s")
        print(f"{name:<24} {e['kind']:<6} {e['lag']:>7} "
              f"{'-' if opened is None else opened:>5} "
              f"{'-' if oldest is None else f'{oldest:.1f}s':>8}  {runs}")
    fails = st["recent_failures"]
    print(f"recent failures: {len(fails) or 'none'}")
    for f in fails[:10]:
        run = f" run {f['run_id']}" if f.get("run_id") else ""
        print(f"  [{f['kind']} {f['name']}{run}] {f['reason']}")
    return 0
