"""``streamflow runs`` and ``streamflow dlq``: the ledger and the dead letters, from any machine."""

from __future__ import annotations

import argparse
import asyncio
import time

import orjson

from streamflow.model import RunRecord, Settings
from streamflow.ops import find, list_dead_letters, list_runs, replay, retry_run


def _settings(args: argparse.Namespace) -> Settings:
    return Settings.load(kafka_bootstrap=args.kafka, state_dir=args.state_dir,
                         namespace=args.namespace)


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--kafka", metavar="BOOTSTRAP",
                   help="Kafka bootstrap servers (default: STREAMFLOW_KAFKA_BOOTSTRAP, else the "
                        "embedded log)")
    p.add_argument("--state-dir", help="embedded log location (default .streamflow)")
    p.add_argument("--namespace", help="topic prefix (default sf)")
    p.add_argument("--json", action="store_true", help="machine-readable output")


def _reveal(p: argparse.ArgumentParser) -> None:
    p.add_argument("--reveal", action="store_true",
                   help="show the payload's sensitive fields (masked as *** by default)")


def _ts(ms: int) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ms / 1000))


def _runs_list(args: argparse.Namespace) -> int:
    runs = asyncio.run(list_runs(_settings(args)))
    runs = [r for r in runs if (not args.stage or r.stage == args.stage)
            and (not args.status or r.status == args.status)]
    runs.sort(key=lambda r: r.ended_ms)
    if args.json:
        print(orjson.dumps([r.model_dump() for r in runs]).decode())
        return 0
    print(f"{'RUN':<16} {'STAGE':<16} {'PARTITION':<20} {'STATUS':<14} {'TRY':>5} ENDED")
    for r in runs:
        print(f"{r.run_id[:16]:<16} {r.stage[:16]:<16} {r.partition[:20]:<20} {r.status:<14} "
              f"{r.attempt:>2}/{r.max_attempts:<2} {_ts(r.ended_ms)}")
    return 0


def _run_show(args: argparse.Namespace) -> int:
    runs = asyncio.run(list_runs(_settings(args)))
    match: list[RunRecord] = [r for r in runs if r.run_id.startswith(args.run_id)]
    if len(match) != 1:
        print(f"streamflow: error: {len(match)} runs match {args.run_id!r}")
        return 2
    print(orjson.dumps(match[0].model_dump(), option=orjson.OPT_INDENT_2).decode())
    return 0


def _run_retry(args: argparse.Namespace) -> int:
    topics = asyncio.run(retry_run(_settings(args), args.run_id))
    print(f"replayed run {args.run_id} into {', '.join(topics)}; "
          "a running worker picks it up (or the next `streamflow run`)")
    return 0


def _dlq_list(args: argparse.Namespace) -> int:
    entries = [e for e in asyncio.run(list_dead_letters(_settings(args)))
               if not args.stage or e.consumer == args.stage]
    if args.json:
        print(orjson.dumps([e.shown(args.reveal) for e in entries]).decode())
        return 0
    print(f"{'ID':<10} {'KIND':<7} {'BY':<20} REASON")
    for e in entries:
        print(f"{e.id:<10} {e.kind:<7} {e.consumer[:20]:<20} {str(e.body.get('reason'))[:100]}")
    return 0


def _dlq_show(args: argparse.Namespace) -> int:
    (entry,) = find(asyncio.run(list_dead_letters(_settings(args))), [args.id])
    print(orjson.dumps(entry.shown(args.reveal), option=orjson.OPT_INDENT_2).decode())
    return 0


def _dlq_replay(args: argparse.Namespace) -> int:
    settings = _settings(args)
    entries = asyncio.run(list_dead_letters(settings))
    if args.all:
        chosen = [e for e in entries if e.replayable and (not args.stage or
                                                          e.consumer == args.stage)]
    elif args.ids:
        chosen = find(entries, args.ids)
    else:
        print("streamflow: error: name dead-letter ids, or pass --all (with --stage to narrow)")
        return 2
    topics = asyncio.run(replay(settings, chosen))
    print(f"replayed {len(topics)} dead letter(s); a running worker picks them up "
          "(or the next `streamflow run`)")
    return 0


def add_cli(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    runs = sub.add_parser("runs", help="the run ledger: list, show and retry runs")
    rs = runs.add_subparsers(dest="subcommand", required=True, metavar="SUBCOMMAND")
    p = rs.add_parser("list", help="latest status of every run")
    _common(p)
    p.add_argument("--stage", help="only this stage")
    p.add_argument("--status", choices=["succeeded", "retrying", "dead-lettered", "skipped",
                                        "held", "parked", "released"])
    p.set_defaults(func=_runs_list)
    p = rs.add_parser("show", help="one run in full (a unique prefix of its id is enough)")
    _common(p)
    p.add_argument("run_id")
    p.set_defaults(func=_run_show)
    p = rs.add_parser("retry", help="run a dead-lettered or gate-held run again, after a fix")
    _common(p)
    p.add_argument("run_id")
    p.set_defaults(func=_run_retry)

    dlq = sub.add_parser("dlq", help="dead letters: list, show and replay")
    ds = dlq.add_subparsers(dest="subcommand", required=True, metavar="SUBCOMMAND")
    p = ds.add_parser("list", help="every dead letter with its reason")
    _common(p)
    p.add_argument("--stage", help="only those given up by this stage or sink")
    _reveal(p)
    p.set_defaults(func=_dlq_list)
    p = ds.add_parser("show", help="one dead letter in full: reason, origin, error, payload")
    _common(p)
    p.add_argument("id", help="<partition>:<offset>, as `dlq list` shows")
    _reveal(p)
    p.set_defaults(func=_dlq_show)
    p = ds.add_parser("replay", help="re-inject dead letters into their stage or sink")
    _common(p)
    p.add_argument("ids", nargs="*", help="dead-letter ids to replay")
    p.add_argument("--all", action="store_true", help="every replayable dead letter")
    p.add_argument("--stage", help="with --all: only this stage or sink")
    p.set_defaults(func=_dlq_replay)
