"""``streamflow services up|status|down [--json] [names...]``.

Progress and errors go to stderr, the final table or JSON object to stdout, so scripts and CI can
``streamflow services up --json | jq`` while humans still see what is happening.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys

from streamflow.devservices import (
    KAFKA_CLUSTER,
    KAFKA_CLUSTER_BOOTSTRAP,
    SERVICE_NAMES,
    ServiceStatus,
    down,
    reset,
    status,
    up,
)
from streamflow.errors import ServiceError

_EPILOG = (f"Services: {', '.join(SERVICE_NAMES)} (default: all). With --brokers 3, kafka is "
           f"a three-node KRaft cluster on {KAFKA_CLUSTER_BOOTSTRAP} instead (replication "
           "factor 3, min.insync.replicas 2, no unclean leader election), beside the single "
           "broker: its own ports and data.")


def add_cli(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``services`` with ``up``, ``status`` and ``down`` on the main CLI."""
    parser = subparsers.add_parser(
        "services",
        help="start/stop local Kafka, Jaeger and PostgreSQL (no Docker)",
        description="Run the real services StreamFlow needs on 127.0.0.1. Downloads and builds "
        "are cached under ~/.cache/streamflow.",
        epilog=_EPILOG,
    )

    def _usage(_args: argparse.Namespace) -> int:
        parser.print_help(sys.stderr)
        return 2

    parser.set_defaults(func=_usage)
    sub = parser.add_subparsers(dest="services_command", metavar="{up,status,down,reset}")
    helps = {
        "up": ("start services (reusing healthy ones); exit 1 if any failed", _cmd_up),
        "status": ("show services without starting anything; exit 1 if any is down", _cmd_status),
        "down": ("stop the services we started", _cmd_down),
        "reset": (
            "stop Kafka and delete all its topics (a slow start after many test runs)",
            _cmd_reset,
        ),
    }
    for name, (text, func) in helps.items():
        p = sub.add_parser(name, help=text, description=text, epilog=_EPILOG)
        p.add_argument(
            "--json",
            action="store_true",
            help="print one JSON object {name: {running, pid, ports, ...}} to stdout",
        )
        p.add_argument(
            "names",
            nargs="*",
            metavar="name",
            help=f"service to act on ({', '.join(SERVICE_NAMES)}); default: all",
        )
        p.add_argument(
            "--brokers",
            type=int,
            choices=(1, 3),
            default=1,
            help="1: the single dev broker (default); 3: the three-node cluster, in kafka's "
            f"place (service name {KAFKA_CLUSTER})",
        )
        p.set_defaults(func=func)


def _emit(statuses: dict[str, ServiceStatus], as_json: bool) -> None:
    if as_json:
        print(json.dumps({n: s.to_json() for n, s in statuses.items()}, sort_keys=False))
        return
    for name, st in statuses.items():
        state = "running" if st.running else "stopped"
        where = st.endpoints.get("bootstrap") or st.endpoints.get("url") or ""
        pid = f"pid {st.pid}" if st.pid else "-"
        print(f"{name:<13} {state:<8} {pid:<11} {where}  ({st.version or 'not installed'})")


def _names(args: argparse.Namespace) -> list[str]:
    names: list[str] = list(getattr(args, "names", []) or [])
    if getattr(args, "brokers", 1) == 3:
        names = [KAFKA_CLUSTER if n == "kafka" else n for n in names or SERVICE_NAMES]
    return names


def _cmd_up(args: argparse.Namespace) -> int:
    try:
        statuses = up(_names(args))
    except ServiceError as exc:
        print(f"error: {exc}", file=sys.stderr)
        with contextlib.suppress(ServiceError):
            _emit(status(_names(args)), args.json)
        return 1
    _emit(statuses, args.json)
    return 0


def _cmd_status(args: argparse.Namespace) -> int:
    try:
        statuses = status(_names(args))
    except ServiceError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    _emit(statuses, args.json)
    return 0 if all(s.running for s in statuses.values()) else 1


def _cmd_down(args: argparse.Namespace) -> int:
    try:
        down(_names(args))
        statuses = status(_names(args))
    except ServiceError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    _emit(statuses, args.json)
    return 0


def _cmd_reset(args: argparse.Namespace) -> int:
    try:
        names = _names(args) if args.names or args.brokers == 1 else [KAFKA_CLUSTER]
        reset(names)
        statuses = status(names or ["kafka"])
    except ServiceError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    _emit(statuses, args.json)
    return 0
