"""The ``streamflow`` command line."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from collections.abc import Sequence
from typing import Any

import orjson

from streamflow import __version__
from streamflow.connectors import ConnectorError, distribution_of, known_connectors, load_spec
from streamflow.engine import RunSummary, Worker
from streamflow.errors import StreamFlowError
from streamflow.model import Settings, load_pipeline
from streamflow.observability import configure_logging

from ._backfill import add_cli as backfill_cli
from ._catalog import add_cli as catalog_cli
from ._lineage import add_cli as lineage_cli
from ._obs import add_cli as obs_cli
from ._ops import add_cli as ops_cli
from ._services import add_cli as services_cli


def _run(args: argparse.Namespace) -> int:
    serve = args.command == "worker"
    settings = Settings.load(
        kafka_bootstrap=args.kafka, state_dir=args.state_dir, partitions=args.partitions,
        http_port=args.http_port, exactly_once=True if args.exactly_once else None,
        worker_id=getattr(args, "worker_id", None),
    )
    pipeline = load_pipeline(args.target)
    worker = Worker(pipeline, settings, serve=serve,
                    sources=not getattr(args, "no_sources", False))
    where = (f"Kafka at {settings.kafka_bootstrap}" if settings.kafka_bootstrap
             else f"the embedded log in {settings.state_dir}")
    mode = "exactly once" if settings.exactly_once else "at least once"
    what = "serving" if serve else "running"
    print(f"streamflow: {what} pipeline {pipeline.name!r} on {where}, {mode} "
          f"(Ctrl-C or SIGTERM drains and stops)", file=sys.stderr)

    async def main() -> RunSummary:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, worker.request_stop)
        return await worker.run()

    summary = asyncio.run(main())
    if args.json:
        print(orjson.dumps(summary.to_json()).decode())
    else:
        print(f"pipeline {summary.pipeline!r} done on the {summary.transport} transport")
        print(f"  records in:     {summary.records_in}")
        print(f"  records out:    {summary.records_out}")
        print(f"  dead-lettered:  {summary.dead_lettered} (topic {summary.dead_letter_topic})")
        for name, loc in summary.outputs.items():
            print(f"  output ({name}): {loc}")
        if not summary.drained:
            print("  warning: stopped before draining; the rest is redelivered on the next run")
    return 0


def _connectors_list(args: argparse.Namespace) -> int:
    rows: list[dict[str, Any]] = []
    for name in known_connectors():
        package, version = distribution_of(name)
        try:
            spec = load_spec(name)
        except ConnectorError as e:  # one broken plugin must not hide the others
            rows.append({"name": name, "kind": "?", "package": package, "version": version,
                         "extra": None, "class": None, "config_schema": None, "error": str(e)})
            continue
        for kind, cls, cfg in (("source", spec.source, spec.source_config),
                               ("sink", spec.sink, spec.sink_config)):
            if cls is not None and cfg is not None:
                rows.append({"name": name, "kind": kind, "package": package,
                             "version": version, "extra": spec.extra,
                             "class": f"{cls.__module__}.{cls.__qualname__}",
                             "config_schema": cfg.model_json_schema()})
    if args.json:
        print(orjson.dumps(rows).decode())
    else:
        print(f"{'NAME':<12} {'KIND':<7} {'PACKAGE':<24} CLASS")
        for r in rows:
            pkg = f"{r['package']} {r['version']}"
            print(f"{r['name']:<12} {r['kind']:<7} {pkg:<24} {r['class'] or r.get('error')}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="streamflow",
        description="Event-driven streaming orchestration: stages fire when their inputs arrive.",
    )
    parser.add_argument("--version", action="version", version=f"streamflow {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument("--log-format", choices=["auto", "json", "text"], default="auto",
                        help="json: one object per line with trace_id/span_id; auto: text on "
                             "a terminal, json otherwise")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = sub.add_parser(
        "run", help="run a pipeline until its sources are exhausted or Ctrl-C",
        description="Run a pipeline until its sources are exhausted (or Ctrl-C / SIGTERM), "
        "drain in-flight work and exit 0. Uses the embedded transport unless Kafka is "
        "configured (--kafka or STREAMFLOW_KAFKA_BOOTSTRAP).",
    )
    worker = sub.add_parser(
        "worker", help="serve a pipeline as one of several worker processes, until SIGTERM",
        description="Join the pipeline's consumer groups and process the partitions this "
        "process is assigned, until SIGTERM or Ctrl-C: then stop the sources, finish the "
        "runs in flight, flush the sinks, commit and exit 0 (within --drain-timeout). Start "
        "more workers with the same namespace to scale out; partitions, their state and "
        "their fired runs move between them. /healthz and /readyz answer on --http-port.",
    )
    for p in (run, worker):
        p.add_argument("target", help="module:pipeline or path/to/file.py:pipeline")
        p.add_argument("--kafka", metavar="BOOTSTRAP", help="Kafka bootstrap servers")
        p.add_argument("--state-dir", help="where the embedded log and local state live "
                       "(default .streamflow)")
        p.add_argument("--partitions", type=int, help="partitions for new Kafka topics")
        p.add_argument("--http-port", metavar="PORT",
                       help="serve /healthz, /readyz, /metrics and /status here (default "
                            "9464; 0: any free port; off: no HTTP)")
        p.add_argument("--exactly-once", action="store_true",
                       help="outputs, dead letters and input offsets commit in one "
                            "transaction per input partition (STREAMFLOW_EXACTLY_ONCE=1)")
        p.add_argument("--json", action="store_true", help="print the summary as JSON")
        p.set_defaults(func=_run)
    worker.add_argument("--worker-id", metavar="ID",
                        help="a stable name for this process (STREAMFLOW_WORKER_ID), e.g. a "
                             "pod name: a restarted worker takes its partitions back at once")
    worker.add_argument("--no-sources", action="store_true",
                        help="run only stages and sinks: sources are not partitioned, so "
                             "with several workers exactly one runs them")

    conn = sub.add_parser("connectors", help="installed connectors")
    conn_sub = conn.add_subparsers(dest="subcommand", required=True, metavar="SUBCOMMAND")
    cl = conn_sub.add_parser("list", help="list the connectors registered through entry points")
    cl.add_argument("--json", action="store_true")
    cl.set_defaults(func=_connectors_list)

    for add in (obs_cli, ops_cli, backfill_cli, catalog_cli, lineage_cli, services_cli):
        add(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    configure_logging(args.log_format, logging.DEBUG if args.verbose else logging.WARNING)
    try:
        rc: int = args.func(args)
        return rc
    except StreamFlowError as e:
        print(f"streamflow: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
