"""``streamflow catalog rebuild|status|follow``: the catalog of a namespace's control topics."""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import orjson

from streamflow.catalog import Projector, SqlCatalog, counts, freshness, open_catalog
from streamflow.model import Settings
from streamflow.transports import Transport, make_transport

T = TypeVar("T")


def _settings(args: argparse.Namespace) -> Settings:
    return Settings.load(kafka_bootstrap=args.kafka, state_dir=args.state_dir,
                         namespace=args.namespace)


async def _with(settings: Settings,
                work: Callable[[Transport, SqlCatalog], Awaitable[T]]) -> T:
    transport, store = make_transport(settings), open_catalog(settings)
    await transport.start()
    try:
        await store.start()
        try:
            return await work(transport, store)
        finally:
            await store.close()
    finally:
        await transport.close()


class _Bar:
    """Messages folded of those to fold: rich on a terminal, a line a second otherwise."""

    def __init__(self, enabled: bool) -> None:
        self.enabled, self._last, self.started = enabled, 0.0, time.monotonic()
        self.progress: Any = None
        self.task: Any = None

    def __call__(self, done: int, total: int) -> None:
        if not self.enabled:
            return
        if sys.stderr.isatty():
            # Deferred: rich's progress bar loads only on a terminal, not for --json or a pipe.
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

            if self.progress is None:
                self.progress = Progress(BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
                self.progress.start()
                self.task = self.progress.add_task("catalog", total=total)
            self.progress.update(self.task, completed=done, total=total)
        elif time.monotonic() - self._last >= 1.0 or done >= total:
            self._last = time.monotonic()
            rate = done / max(1e-6, time.monotonic() - self.started)
            print(f"catalog: {done}/{total} messages folded, {rate:.0f}/s", file=sys.stderr)

    def close(self) -> None:
        if self.progress is not None:
            self.progress.stop()


def _rebuild(args: argparse.Namespace) -> int:
    settings = _settings(args)
    bar = _Bar(not args.json)

    async def work(t: Transport, store: SqlCatalog) -> int:
        return await Projector(t, store, settings, batch_rows=args.batch).rebuild(bar)

    started = time.monotonic()
    try:
        n = asyncio.run(_with(settings, work))
    finally:
        bar.close()
    took = time.monotonic() - started
    if args.json:
        print(orjson.dumps({"messages": n, "seconds": round(took, 3)}).decode())
    else:
        print(f"catalog rebuilt from {n} messages in {took:.1f}s")
    return 0


async def _status_of(settings: Settings, t: Transport, store: SqlCatalog) -> dict[str, Any]:
    rows = await freshness(t, store)
    return {"catalog": store.where, "schema_version": await store.schema_version(),
            "rows": await counts(store), "freshness": [
                {"topic": r.topic, "partition": r.partition, "projected": r.projected,
                 "end": r.end, "lag_records": r.lag_records, "lag_s": r.lag_s} for r in rows]}


def _status(args: argparse.Namespace) -> int:
    settings = _settings(args)
    status = asyncio.run(_with(settings, lambda t, s: _status_of(settings, t, s)))
    if args.json:
        print(orjson.dumps(status).decode())
        return 0
    print(f"catalog {status['catalog']}, schema v{status['schema_version']}")
    print("  rows: " + ", ".join(f"{k} {v}" for k, v in status["rows"].items()))
    print(f"  {'TOPIC':<40} {'PART':>4} {'PROJECTED':>10} {'END':>10} {'BEHIND':>8} LAG")
    for r in status["freshness"]:
        lag = "never caught up" if r["lag_s"] is None else f"{r['lag_s']:.1f}s"
        print(f"  {r['topic'][:40]:<40} {r['partition']:>4} {r['projected']:>10} "
              f"{r['end']:>10} {r['lag_records']:>8} {lag}")
    return 0


def _follow(args: argparse.Namespace) -> int:
    settings = _settings(args)

    async def work(t: Transport, store: SqlCatalog) -> int:
        projector = Projector(t, store, settings, batch_rows=args.batch,
                              idle_s=args.interval)
        if args.once:
            return await projector.catch_up()
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await projector.follow(stop)
        return 0

    print(f"streamflow: catalog of namespace {settings.namespace!r} "
          f"{'catching up' if args.once else 'following (Ctrl-C or SIGTERM stops)'}",
          file=sys.stderr)
    n = asyncio.run(_with(settings, work))
    if args.once:
        print(f"catalog: {n} messages folded")
    return 0


def add_cli(sub: Any) -> None:
    cat = sub.add_parser(
        "catalog", help="the catalog: the control topics folded into SQLite or PostgreSQL",
        description="The catalog folds a namespace's run ledger, dead letters, gate holds, "
        "contracts and backfill jobs into SQL (SQLite under the state dir, or PostgreSQL at "
        "STREAMFLOW_CATALOG_URL) for the CLIs, the API and the UI; the topics stay the truth.")
    cs = cat.add_subparsers(dest="subcommand", required=True, metavar="SUBCOMMAND")
    rebuild = cs.add_parser("rebuild", help="empty the catalog and fold the topics again",
                            description="Delete every row, then fold everything the topics "
                            "still hold, with a progress bar. Runs older than the ledger's "
                            "retention are gone from the topics, so from the catalog too.")
    status = cs.add_parser("status", help="schema version, row counts and freshness",
                           description="The schema version, rows per table, and per source "
                           "partition how far the catalog has read it and how far behind it is.")
    follow = cs.add_parser("follow", help="keep the catalog up to date until Ctrl-C/SIGTERM",
                           description="Fold new messages as they come; several followers "
                           "may share one database (they converge on the same rows).")
    for p in (rebuild, status, follow):
        p.add_argument("--kafka", metavar="BOOTSTRAP",
                       help="Kafka bootstrap servers (default: STREAMFLOW_KAFKA_BOOTSTRAP, "
                            "else the embedded log)")
        p.add_argument("--state-dir", help="embedded log and SQLite catalog location "
                                           "(default .streamflow)")
        p.add_argument("--namespace", help="topic prefix (default sf)")
        p.add_argument("--json", action="store_true", help="machine-readable output")
    for p in (rebuild, follow):
        p.add_argument("--batch", type=int, default=5000, metavar="N",
                       help="rows per database transaction, roughly (default 5000)")
    follow.add_argument("--once", action="store_true",
                        help="catch up to the topics' ends as of now, then exit")
    follow.add_argument("--interval", type=float, default=0.5, metavar="SECONDS",
                        help="how often an idle follower looks for news (default 0.5)")
    rebuild.set_defaults(func=_rebuild)
    status.set_defaults(func=_status)
    follow.set_defaults(func=_follow)
