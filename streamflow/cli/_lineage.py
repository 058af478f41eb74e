"""``streamflow lineage <asset> <partition>``: print the upstream tree that
:mod:`streamflow.ops` builds from the run ledger."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections import Counter

import orjson

from streamflow.ops import (
    DEFAULT_DEPTH,
    AssetNode,
    StageNode,
    build_tree,
    list_runs,
    tree_json,
    what_exists,
)

from ._ops import _common, _settings, _ts


def _counts(c: Counter[str]) -> str:
    return ", ".join(f"{k} {n}" for k, n in c.most_common())


def _stage_label(s: StageNode) -> str:
    n = len(s.runs)
    parts = [f"stage {s.stage}: {n} run{'s' if n != 1 else ''} ({_counts(s.statuses)})"]
    backfills = s.backfills
    for mode, count in s.modes.most_common():
        if mode == "backfill" and backfills:
            ids = (next(iter(backfills)) if len(backfills) == 1 else
                   ", ".join(f"{b} {k}" for b, k in backfills.most_common()))
            parts.append(f"backfill {count} ({ids})")
        else:
            parts.append(f"{mode} {count}")
    if s.inputs:
        parts.append("inputs " + ", ".join(f"{a} v{v}" for a, v in s.inputs))
    return " · ".join(parts)


def _asset_label(node: AssetNode) -> str:
    label = f"{node.asset} / {node.partition}"
    if node.source:
        label += "  ← source" if not node.stages and node.stop is None else "  (+ from a source)"
    return label + {None: "", "cycle": "  ↺ cycle: already on this path",
                    "shown-above": "  (upstream shown above)",
                    "depth-limit": "  … deeper than --depth"}[node.stop]


def render_tree(node: AssetNode, with_runs: bool = False) -> list[str]:
    """The tree as text lines; with ``with_runs``, each run instead of its stage's counts."""
    lines = [_asset_label(node)]

    def children(n: AssetNode) -> list[tuple[str, AssetNode | StageNode | None]]:
        out: list[tuple[str, AssetNode | StageNode | None]] = []
        for s in n.stages:
            n_runs = f"stage {s.stage}: {len(s.runs)} run{'s' if len(s.runs) != 1 else ''}"
            out.append((n_runs if with_runs else _stage_label(s), s))
        return out

    def stage_children(s: StageNode) -> list[tuple[str, AssetNode | StageNode | None]]:
        out: list[tuple[str, AssetNode | StageNode | None]] = []
        if with_runs:
            for r in s.runs:
                bf = f" {r.backfill}" if r.backfill else ""
                out.append((f"run {r.run_id[:12]} {r.status} {r.attempt}/{r.max_attempts} "
                            f"{r.mode}{bf} ended {_ts(r.ended_ms)}", None))
        out += [(_asset_label(u), u) for u in s.upstream]
        return out

    def walk(items: list[tuple[str, AssetNode | StageNode | None]], prefix: str) -> None:
        for k, (label, child) in enumerate(items):
            last = k == len(items) - 1
            lines.append(f"{prefix}{'└─' if last else '├─'} {label}")
            deeper = prefix + ("   " if last else "│  ")
            if isinstance(child, StageNode):
                walk(stage_children(child), deeper)
            elif isinstance(child, AssetNode):
                walk(children(child), deeper)

    walk(children(node), "")
    return lines


def _lineage(args: argparse.Namespace) -> int:
    runs = asyncio.run(list_runs(_settings(args)))
    tree = build_tree(runs, args.asset, args.partition, args.depth)
    if tree is None:
        print(f"streamflow: {what_exists(runs, args.asset, args.partition)}", file=sys.stderr)
        return 1
    if args.json:
        print(orjson.dumps(tree_json(tree, args.runs)).decode())
    else:
        print("\n".join(render_tree(tree, args.runs)))
    return 0


def add_cli(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "lineage", help="where a partition of an asset came from: its upstream runs",
        description="Walk the run ledger upstream from one partition of an asset: the runs "
        "that produced it, grouped by stage (statuses, live or backfill), then the runs that "
        "produced their inputs, down to the sources.")
    _common(p)
    p.add_argument("asset", help="the asset name")
    p.add_argument("partition", help="its partition key, e.g. 2026-10-03")
    p.add_argument("--runs", action="store_true",
                   help="list each run (id, status, attempt, mode, backfill, ended) instead of "
                        "per-stage counts")
    p.add_argument("--depth", type=int, default=DEFAULT_DEPTH,
                   help=f"how many stages deep to walk upstream (default {DEFAULT_DEPTH})")
    p.set_defaults(func=_lineage)
