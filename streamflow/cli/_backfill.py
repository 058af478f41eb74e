"""``streamflow backfill start|list|status|cancel|resume``, and the API behind it."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
import time
from collections.abc import Callable
from datetime import datetime
from typing import Any

import orjson

from streamflow.backfill import (
    BackfillJob,
    Driver,
    Planner,
    Progress,
    Reprocess,
    find_job,
    load_jobs,
    new_id,
    parse_time,
    run_counts,
    set_status,
    target_stages,
)
from streamflow.errors import BackfillError
from streamflow.model import Pipeline, Settings, load_pipeline
from streamflow.observability import Tracing, configure_tracing
from streamflow.transports import Transport, make_transport

from ._ops import _common, _settings

log = logging.getLogger("streamflow.backfill")


async def start_backfill(
    pipeline: Pipeline, asset: str, start: datetime, end: datetime, *,
    settings: Settings | None = None, stage: str | None = None,
    partitions: list[str] | None = None, reprocess: Reprocess = "none",
    max_concurrency: int = 4, rate: float | None = None, dry_run: bool = False,
    target: str = "", on_progress: Callable[[Progress], None] | None = None,
    on_start: Callable[[BackfillJob, Driver], None] | None = None,
) -> BackfillJob:
    """Replay ``asset``'s history in [start, end) through the stages that read it (or
    ``stage``), beside live traffic; returns when every slice is done (or it was stopped).
    Workers serving the pipeline do the runs: start them with ``streamflow worker``."""
    s = settings or Settings.load()
    _, stages = target_stages(pipeline, asset, stage)
    if max_concurrency < 1:
        raise BackfillError("--max-concurrency must be at least 1")
    job = BackfillJob(id=new_id(asset, start, end), target=target, pipeline=pipeline.name,
                      asset=asset, stages=stages, start=start, end=end, partitions=partitions,
                      reprocess=reprocess, max_concurrency=max_concurrency, rate=rate,
                      created_ms=int(time.time() * 1000))
    return await _drive(pipeline, job, s, dry_run, on_progress, on_start)


async def resume_backfill(
    job_id: str, *, settings: Settings | None = None, pipeline: Pipeline | None = None,
    max_concurrency: int | None = None, rate: float | None = None,
    on_progress: Callable[[Progress], None] | None = None,
    on_start: Callable[[BackfillJob, Driver], None] | None = None,
) -> BackfillJob:
    """Go on with an interrupted backfill: slices already done are not replayed again."""
    s = settings or Settings.load()
    t = make_transport(s)
    await t.start()
    try:
        job = await find_job(t, s.namespace, job_id)
    finally:
        await t.close()
    if job.status in ("completed", "cancelled"):
        raise BackfillError(f"backfill {job.id} is {job.status}; start a new one instead")
    if job.driver_alive():
        raise BackfillError(f"backfill {job.id} is running (driver {job.driver}); follow it "
                            f"with `streamflow backfill status {job.id}`, or cancel it")
    if pipeline is None:
        if not job.target:
            raise BackfillError(f"backfill {job.id} was started from code: resume it there")
        pipeline = load_pipeline(job.target)
    if max_concurrency is not None:
        job.max_concurrency = max_concurrency
    if rate is not None:
        job.rate = rate
    return await _drive(pipeline, job, s, False, on_progress, on_start)


async def _drive(pipeline: Pipeline, job: BackfillJob, s: Settings, dry_run: bool,
                 on_progress: Callable[[Progress], None] | None,
                 on_start: Callable[[BackfillJob, Driver], None] | None) -> BackfillJob:
    setup = configure_tracing(default_service=f"streamflow-{pipeline.name}")
    t = make_transport(s)
    tracing = setup.tracing(t.messaging_system) if setup is not None else \
        Tracing(None, t.messaging_system)
    await t.start()
    try:
        plan = await Planner(pipeline, t, s.namespace, s.dead_letter_topic, tracing,
                             s.ledger_retention_s).plan(job)
        if plan.unruled:
            log.warning("backfill %s: %d inputs are older than the run ledger's retention "
                        "(ledger_retention_s=%gs) and not in it, so --reprocess none cannot "
                        "rule them out: they are sent, and run again if they ran (keyed sinks "
                        "absorb it)", job.id, plan.unruled, s.ledger_retention_s)
        if job.slices:  # resumed: the plan is deterministic, the record says what is done
            if [(x.first, x.last) for x in job.slices] != [(x.first, x.last)
                                                           for x in plan.slices]:
                raise BackfillError(f"backfill {job.id}: its history changed since it started "
                                    "(other partitions now); cancel it and start a new one")
            for old, new in zip(job.slices, plan.slices, strict=True):
                new.state, new.targets = old.state, old.targets
        job.slices, job.via = plan.slices, plan.via
        if dry_run:
            job.status = "planned"
            return job
        if not job.slices:
            log.warning("backfill %s: no records of %s in [%s, %s) via %s; nothing to do",
                        job.id, job.asset, job.start.isoformat(), job.end.isoformat(), plan.via)
        driver = Driver(job, plan, t, s, on_progress)
        if on_start is not None:
            on_start(job, driver)
        return await driver.run()
    finally:
        await t.close()
        if setup is not None:
            setup.shutdown()


# --- the command line ---------------------------------------------------------------------

class _Bar:
    """Partitions done of total, records, rate and ETA: rich on a terminal, a line a second
    otherwise (logs of a CI job stay readable)."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.progress: Any = None
        self.task: Any = None
        self._last = 0.0
        self._warned = False

    def __call__(self, p: Progress) -> None:
        if not self.enabled:
            return
        job = p.job
        elapsed = max(1e-6, time.monotonic() - p.started)
        rate = job.records_done / elapsed
        left = job.records_total - job.records_done
        eta = f"{left / rate:.0f}s" if rate > 0 else "?"
        if p.waiting_s > 15 and not self._warned:
            self._warned = True
            print(f"streamflow: no slice finished for {p.waiting_s:.0f}s: is a worker serving "
                  f"stage(s) {', '.join(job.stages)}? Start one with `streamflow worker "
                  f"{job.target or 'MODULE:PIPELINE'}`", file=sys.stderr)
        if sys.stderr.isatty():
            self._rich(job, rate, eta)
        elif time.monotonic() - self._last >= 1.0:
            self._last = time.monotonic()
            print(f"backfill {job.id}: partitions {job.keys_done}/{job.keys_total}, records "
                  f"{job.records_done}/{job.records_total}, {rate:.0f} rec/s, ETA {eta}",
                  file=sys.stderr)

    def _rich(self, job: BackfillJob, rate: float, eta: str) -> None:
        # Deferred: rich's progress bar loads only on a terminal, not for --json or a pipe.
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

        if self.progress is None:
            self.progress = Progress(TextColumn("[bold]{task.description}"), BarColumn(),
                                     MofNCompleteColumn(), TextColumn("partitions"),
                                     TextColumn("{task.fields[detail]}"), transient=False)
            self.progress.start()
            self.task = self.progress.add_task(job.id, total=job.keys_total, detail="")
        self.progress.update(self.task, completed=job.keys_done,
                             detail=f"{job.records_done}/{job.records_total} records · "
                                    f"{rate:.0f} rec/s · ETA {eta}")

    def close(self) -> None:
        if self.progress is not None:
            self.progress.stop()


def _print_job(job: BackfillJob, counts: dict[str, int] | None = None) -> None:
    print(f"backfill {job.id}: {job.shown_status()}")
    print(f"  pipeline   {job.pipeline} ({job.target or 'from code'})")
    print(f"  asset      {job.asset} via {job.via}, stages {', '.join(job.stages)}")
    print(f"  range      [{job.start.isoformat()}, {job.end.isoformat()})"
          + (f", partitions {', '.join(job.partitions)}" if job.partitions else ""))
    print(f"  reprocess  {job.reprocess}; max concurrency {job.max_concurrency}"
          + (f"; rate {job.rate:g}/s" if job.rate else ""))
    skipped = sum(s.skipped for s in job.slices)
    print(f"  progress   partitions {job.keys_done}/{job.keys_total}, records "
          f"{job.records_done}/{job.records_total}"
          + (f" ({skipped} already run, left out)" if skipped else ""))
    if counts is not None:
        shown = ", ".join(f"{k} {v}" for k, v in sorted(counts.items())) or "none yet"
        print(f"  runs       {shown}")
    if job.error:
        print(f"  error      {job.error}")
    if job.shown_status() == "interrupted":
        print(f"  resume it with `streamflow backfill resume {job.id}`")


def _job_json(job: BackfillJob, counts: dict[str, int] | None = None) -> dict[str, Any]:
    d = job.model_dump(mode="json", exclude={"slices"})
    d.update(status=job.shown_status(), partitions_done=job.keys_done,
             partitions_total=job.keys_total, records_done=job.records_done,
             records_total=job.records_total, slices=len(job.slices))
    if counts is not None:
        d["runs"] = counts
    return d


def _run_driver(args: argparse.Namespace, go: Callable[..., Any]) -> int:
    bar = _Bar(not args.json)
    stopped: list[Driver] = []

    def on_start(job: BackfillJob, driver: Driver) -> None:
        stopped.append(driver)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, driver.request_stop)
        if not args.json:
            print(f"backfill {job.id}: {job.keys_total} partitions, {job.records_total} "
                  f"records via {job.via} into stage(s) {', '.join(job.stages)}",
                  file=sys.stderr)

    try:
        job = asyncio.run(go(on_progress=bar, on_start=on_start))
    finally:
        bar.close()
    if args.json:
        print(orjson.dumps(_job_json(job)).decode())
    else:
        _print_job(job)
    return 0 if job.status in ("completed", "cancelled") or getattr(args, "dry_run", False) \
        else 1


def _start(args: argparse.Namespace) -> int:
    s = _settings(args)
    pipeline = load_pipeline(args.target)
    start, end = parse_time(args.start, "--from"), parse_time(args.end, "--to")
    if end <= start:
        raise BackfillError(f"--to {args.end} must come after --from {args.start} "
                            "(the range is half-open: [from, to))")
    parts = [p for x in args.partitions for p in x.split(",") if p] if args.partitions else None

    async def go(**kw: Any) -> BackfillJob:
        return await start_backfill(
            pipeline, args.asset, start, end, settings=s, stage=args.stage, partitions=parts,
            reprocess=args.reprocess, max_concurrency=args.max_concurrency, rate=args.rate,
            dry_run=args.dry_run, target=args.target, **kw)

    if args.dry_run:
        job = asyncio.run(go())
        if args.json:
            print(orjson.dumps(_job_json(job) | {"dry_run": True}).decode())
            return 0
        print("dry run: nothing is published")
        _print_job(job)
        for sl in job.slices[:20]:
            name = sl.first if sl.keys == 1 else f"{sl.first} .. {sl.last} ({sl.keys})"
            print(f"    {name:<32} {sl.records:>8} records" +
                  (f", {sl.skipped} already run" if sl.skipped else ""))
        if len(job.slices) > 20:
            print(f"    … and {len(job.slices) - 20} more")
        return 0
    return _run_driver(args, go)


def _resume(args: argparse.Namespace) -> int:
    s = _settings(args)
    pipeline = load_pipeline(args.target) if args.target else None

    async def go(**kw: Any) -> BackfillJob:
        return await resume_backfill(args.id, settings=s, pipeline=pipeline,
                                     max_concurrency=args.max_concurrency, rate=args.rate, **kw)

    return _run_driver(args, go)


async def _with_transport(s: Settings, fn: Callable[[Transport], Any]) -> Any:
    t = make_transport(s)
    await t.start()
    try:
        return await fn(t)
    finally:
        await t.close()


def _list(args: argparse.Namespace) -> int:
    s = _settings(args)
    jobs = asyncio.run(_with_transport(s, lambda t: load_jobs(t, s.namespace)))
    rows = sorted(jobs.values(), key=lambda j: j.created_ms)
    if args.json:
        print(orjson.dumps([_job_json(j) for j in rows]).decode())
        return 0
    if not rows:
        print(f"no backfills in namespace {s.namespace!r}; start one with `streamflow backfill "
              "start MODULE:PIPELINE --asset A --from T1 --to T2`")
        return 0
    print(f"{'ID':<14} {'STATUS':<12} {'ASSET':<16} {'RANGE':<36} {'PARTITIONS':>11} RECORDS")
    for j in rows:
        rng = f"{j.start:%Y-%m-%d %H:%M} .. {j.end:%Y-%m-%d %H:%M}"
        print(f"{j.id:<14} {j.shown_status():<12} {j.asset[:16]:<16} {rng:<36} "
              f"{f'{j.keys_done}/{j.keys_total}':>11} {j.records_done}/{j.records_total}")
    return 0


def _status(args: argparse.Namespace) -> int:
    s = _settings(args)

    async def get(t: Transport) -> tuple[BackfillJob, dict[str, int]]:
        job = await find_job(t, s.namespace, args.id)
        return job, await run_counts(t, s.namespace, job.id)

    job, counts = asyncio.run(_with_transport(s, get))
    if args.json:
        print(orjson.dumps(_job_json(job, counts)).decode())
    else:
        _print_job(job, counts)
    return 0


def _cancel(args: argparse.Namespace) -> int:
    s = _settings(args)

    async def cancel(t: Transport) -> BackfillJob:
        job = await find_job(t, s.namespace, args.id)
        if job.status in ("completed", "cancelled"):
            raise BackfillError(f"backfill {job.id} is already {job.status}")
        await set_status(t, s.namespace, job, "cancelled")
        return job

    job = asyncio.run(_with_transport(s, cancel))
    print(f"backfill {job.id} cancelled: its driver stops publishing within 2 s; the "
          f"{job.max_concurrency} partition(s) at most already in the lane still run")
    return 0


def add_cli(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    bf = sub.add_parser(
        "backfill", help="replay an asset's history beside live traffic",
        description="Replay an asset's history for an event-time range through the stages "
        "that read it, while live data keeps flowing: the backfill has its own lane, read "
        "only when live input leaves room, and an input seen by both is run once. Workers "
        "(`streamflow worker`) do the runs; this command feeds them and shows progress.")
    bs = bf.add_subparsers(dest="subcommand", required=True, metavar="SUBCOMMAND")

    p = bs.add_parser("start", help="start a backfill and follow it to the end",
                      description="Plan and run a backfill. History comes from the asset's "
                      "source when it can read history (files), else from the asset's own "
                      "topic. Ctrl-C interrupts it; `backfill resume ID` goes on.")
    p.add_argument("target", help="module:pipeline or path/to/file.py:pipeline")
    p.add_argument("--asset", required=True, help="the asset whose history is replayed")
    p.add_argument("--stage", help="re-fire only this stage (default: every stage reading "
                                   "the asset)")
    p.add_argument("--from", dest="start", required=True, metavar="T1",
                   help="range start, ISO 8601, inclusive (no zone: UTC)")
    p.add_argument("--to", dest="end", required=True, metavar="T2",
                   help="range end, ISO 8601, exclusive")
    p.add_argument("--partitions", nargs="+", metavar="KEY",
                   help="only these partition keys (space or comma separated)")
    p.add_argument("--reprocess", choices=["none", "failed", "all"], default="none",
                   help="none: skip inputs whose runs already finished (default); failed: "
                        "run again what was dead-lettered; all: run everything again, as "
                        "new runs")
    p.add_argument("--max-concurrency", type=int, default=4, metavar="N",
                   help="partitions in flight at once (default 4)")
    p.add_argument("--rate", type=float, metavar="PER_S",
                   help="at most this many records per second (default: as fast as the "
                        "workers take them)")
    p.add_argument("--dry-run", action="store_true",
                   help="show the partitions and record counts, publish nothing")
    _common(p)
    p.set_defaults(func=_start)

    p = bs.add_parser("resume", help="go on with an interrupted backfill")
    p.add_argument("id", help="backfill id (a unique prefix is enough)")
    p.add_argument("target", nargs="?", help="module:pipeline, if not the one it started with")
    p.add_argument("--max-concurrency", type=int, metavar="N")
    p.add_argument("--rate", type=float, metavar="PER_S")
    _common(p)
    p.set_defaults(func=_resume)

    p = bs.add_parser("list", help="every backfill of the namespace with its progress")
    _common(p)
    p.set_defaults(func=_list)
    p = bs.add_parser("status", help="one backfill: range, progress, its runs by status")
    p.add_argument("id", help="backfill id (a unique prefix is enough)")
    _common(p)
    p.set_defaults(func=_status)
    p = bs.add_parser("cancel", help="stop a backfill: nothing more is published")
    p.add_argument("id", help="backfill id (a unique prefix is enough)")
    _common(p)
    p.set_defaults(func=_cancel)
