"""Reading the catalog back in the shapes the rest of StreamFlow knows (``RunRecord``), and
whole tables in a stable order (a rebuild is compared with a follower row for row)."""

from __future__ import annotations

from typing import Any

import orjson

from streamflow.model import RunInput, RunRecord

from ._rows import TABLES
from ._store import CatalogStore

_RUN_COLUMNS = ("run_id", "stage", "partition_key", "status", "attempt", "max_attempts",
                "started_ms", "ended_ms", "mode", "replay", "output", "backfill", "trace_id",
                "error", "checks")


def _loads(v: Any) -> Any:
    return None if v is None else orjson.loads(v)


async def read_runs(store: CatalogStore, where: str = "", params: tuple[Any, ...] = ()
                    ) -> dict[str, RunRecord]:
    """Runs as the ledger's readers give them (``validated(read_ledger(...))``); ``where``:
    a condition on ``runs`` (``?`` placeholders)."""
    cond = f" WHERE {where}" if where else ""
    rows = await store.fetch(f"SELECT {', '.join(_RUN_COLUMNS)} FROM runs{cond}", params)
    inputs: dict[str, list[RunInput]] = {}
    outputs: dict[str, list[str]] = {}
    sub = f" WHERE run_id IN (SELECT run_id FROM runs{cond})"
    for rid, asset, pkey, version, arrival in await store.fetch(
            "SELECT run_id, asset, partition_key, version, arrival_id FROM run_inputs"
            f"{sub} ORDER BY run_id, pos", params):
        inputs.setdefault(rid, []).append(RunInput(asset=asset, partition=pkey,
                                                   version=version, arrival_id=arrival))
    for rid, arrival in await store.fetch(
            f"SELECT run_id, arrival_id FROM run_outputs{sub} ORDER BY run_id, pos", params):
        outputs.setdefault(rid, []).append(arrival)
    out: dict[str, RunRecord] = {}
    for r in rows:
        d = dict(zip(_RUN_COLUMNS, r, strict=True))
        rid = d.pop("run_id")
        d["partition"] = d.pop("partition_key")
        d["error"], d["checks"] = _loads(d["error"]), _loads(d["checks"])
        try:
            out[rid] = RunRecord.model_validate({
                **d, "run_id": rid, "inputs": inputs.get(rid, []),
                "outputs": outputs.get(rid, [])})
        except ValueError:  # as ``validated`` does: a record no model takes is left out
            continue
    return out


async def dump(store: CatalogStore) -> dict[str, list[tuple[Any, ...]]]:
    """Every projected table whole, each row in key order."""
    out = {}
    for name, spec in TABLES.items():
        cols = ", ".join(spec.columns)
        out[name] = await store.fetch(
            f"SELECT {cols} FROM {name} ORDER BY {', '.join(spec.key)}")
    return out


async def counts(store: CatalogStore) -> dict[str, int]:
    """Rows per projected table."""
    return {name: int((await store.fetch(f"SELECT COUNT(*) FROM {name}"))[0][0])
            for name in TABLES}
