"""``streamflow lineage <asset> <partition>``: where a partition of an asset came from.

Read from the run ledger alone, so it answers from any machine for any namespace, without
the pipeline's code. A run's ``outputs`` are the arrival ids it produced and its ``inputs``
the arrival ids it read: an input found among some run's outputs was produced by that run,
one found nowhere came from a source. Upstream runs are matched by arrival id, never by
partition: a stage may read one partition key and write another.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from streamflow.model import RunRecord

DEFAULT_DEPTH = 20


@dataclass
class StageNode:
    """The runs of one stage that produced (part of) an asset partition."""

    stage: str
    runs: list[RunRecord]
    upstream: list[AssetNode] = field(default_factory=list)

    @property
    def statuses(self) -> Counter[str]:
        return Counter(r.status for r in self.runs)

    @property
    def modes(self) -> Counter[str]:
        return Counter(r.mode for r in self.runs)

    @property
    def backfills(self) -> Counter[str]:
        return Counter(r.backfill for r in self.runs if r.backfill)

    @property
    def inputs(self) -> list[tuple[str, int]]:
        return sorted({(i.asset, i.version) for r in self.runs for i in r.inputs})


@dataclass
class AssetNode:
    """One asset partition; ``source``: some of its arrivals were produced by no run."""

    asset: str
    partition: str
    stages: list[StageNode] = field(default_factory=list)
    source: bool = False
    stop: str | None = None
    """Why it is not expanded: ``cycle``, ``shown-above`` or ``depth-limit``."""


class _Walk:
    def __init__(self, runs: Iterable[RunRecord], max_depth: int) -> None:
        # In log order, as the ledger folds: the last record of a run id is its latest attempt.
        self.runs = {r.run_id: r for r in runs}
        self.by_arrival = {a: r for r in self.runs.values() for a in r.outputs}
        self.max_depth = max_depth
        self.expanded: set[tuple[str, str, frozenset[str]]] = set()

    def stages(self, producers: Iterable[RunRecord], path: frozenset[tuple[str, str]],
               depth: int) -> list[StageNode]:
        by_stage: dict[str, dict[str, RunRecord]] = {}
        for r in producers:
            by_stage.setdefault(r.stage, {})[r.run_id] = r
        out = []
        for stage in sorted(by_stage):
            runs = sorted(by_stage[stage].values(), key=lambda r: (r.ended_ms, r.run_id))
            node = StageNode(stage, runs)
            read: dict[tuple[str, str], set[str]] = {}
            for r in runs:
                for i in r.inputs:
                    read.setdefault((i.asset, i.partition), set()).add(i.arrival_id)
            for (asset, partition), ids in sorted(read.items()):
                node.upstream.append(self.asset(asset, partition, ids, path, depth + 1))
            out.append(node)
        return out

    def asset(self, asset: str, partition: str, ids: set[str],
              path: frozenset[tuple[str, str]], depth: int) -> AssetNode:
        producers = [self.by_arrival[a] for a in ids if a in self.by_arrival]
        node = AssetNode(asset, partition, source=len(producers) < len(ids))
        key = (asset, partition, frozenset(ids))
        if not producers:
            return node
        if (asset, partition) in path:
            node.stop = "cycle"
        elif depth >= self.max_depth:
            node.stop = "depth-limit"
        elif key in self.expanded:
            node.stop = "shown-above"
        else:
            self.expanded.add(key)
            node.stages = self.stages(producers, path | {(asset, partition)}, depth)
        return node


def build_tree(runs: Iterable[RunRecord], asset: str, partition: str,
               max_depth: int = DEFAULT_DEPTH) -> AssetNode | None:
    """The upstream tree of ``asset``/``partition``: the runs whose output is that asset and
    whose partition is that key, then, recursively, the runs that produced their inputs.
    None when no run produced it and none read it."""
    walk = _Walk(runs, max_depth)
    roots = [r for r in walk.runs.values() if r.output == asset and r.partition == partition]
    if not roots:
        read = any(i.asset == asset and i.partition == partition
                   for r in walk.runs.values() for i in r.inputs)
        return AssetNode(asset, partition, source=True) if read else None
    return AssetNode(asset, partition, walk.stages(roots, frozenset({(asset, partition)}), 0))


def _run_json(r: RunRecord) -> dict[str, Any]:
    return {"run_id": r.run_id, "status": r.status, "attempt": r.attempt,
            "max_attempts": r.max_attempts, "mode": r.mode, "backfill": r.backfill,
            "ended_ms": r.ended_ms}


def tree_json(node: AssetNode, with_runs: bool = False) -> dict[str, Any]:
    def stage(s: StageNode) -> dict[str, Any]:
        out: dict[str, Any] = {
            "stage": s.stage, "count": len(s.runs), "statuses": dict(s.statuses),
            "modes": dict(s.modes), "backfills": dict(s.backfills),
            "inputs": [{"asset": a, "version": v} for a, v in s.inputs],
            "upstream": [tree_json(u, with_runs) for u in s.upstream],
        }
        if with_runs:
            out["runs"] = [_run_json(r) for r in s.runs]
        return out

    return {"asset": node.asset, "partition": node.partition, "source": node.source,
            "stop": node.stop, "stages": [stage(s) for s in node.stages]}


def what_exists(runs: Iterable[RunRecord], asset: str, partition: str) -> str:
    """Why nothing matched, what the ledger does hold, and what to try next."""
    latest = {r.run_id: r for r in runs}
    if not latest:
        return ("the run ledger is empty: run the pipeline first, or point --namespace, "
                "--kafka or --state-dir at where it ran")
    parts: dict[str, dict[str, int]] = {}  # asset -> partition -> last ended
    for r in latest.values():
        if r.output is not None:
            seen = parts.setdefault(r.output, {})
            seen[r.partition] = max(seen.get(r.partition, 0), r.ended_ms)
    head = f"no run in the ledger produced {asset} / {partition}"
    if not parts:
        return (f"{head}, and no run records its output asset ({len(latest)} runs were "
                "recorded by stages without an output, or by an older StreamFlow)")

    def some(p: dict[str, int]) -> str:
        recent = sorted(p, key=lambda k: -p[k])[:5]
        more = f", … {len(p) - 5} more" if len(p) > 5 else ""
        return ", ".join(sorted(recent)) + more

    if asset in parts:
        return (f"{head}; {asset} has partitions {some(parts[asset])}. Try one of those, or "
                "`streamflow runs list` for every run")
    have = "; ".join(f"{a} ({some(p)})" for a, p in sorted(parts.items()))
    return (f"{head}; the ledger has outputs for: {have}. Try `streamflow lineage <asset> "
            "<partition>` with one of those")
