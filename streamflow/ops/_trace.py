"""``streamflow trace <asset> <key-or-partition>``: the runs that touched a record, and its trace.

The record's arrivals are found on the asset's topic (by message key or partition key), the
runs from the ledger (directly, then downstream through their outputs), and the trace ids from
the arrivals' ``traceparent`` headers and the runs; each trace is then fetched from Jaeger.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from streamflow.model import (
    H_ARRIVAL_ID,
    H_ASSET,
    H_PARTITION,
    H_TRACEPARENT,
    RunRecord,
    Settings,
    asset_topic,
    runs_topic,
)
from streamflow.observability import is_sampled, trace_id_of
from streamflow.state import read_ledger, validated
from streamflow.transports import make_transport


@dataclass
class Found:
    arrivals: list[dict[str, object]] = field(default_factory=list)
    runs: list[RunRecord] = field(default_factory=list)
    trace_ids: dict[str, bool] = field(default_factory=dict)
    """trace id -> whether its record was sampled."""


async def find_record(settings: Settings, asset: str, key: str) -> Found:
    t = make_transport(settings)
    await t.start()
    try:
        topic = asset_topic(settings.namespace, asset)
        found = Found()
        ids: set[str] = set()
        for m in await t.read_topic(topic):
            h = dict(m.headers)
            if (m.key or b"").decode() != key and h.get(H_PARTITION, b"").decode() != key:
                continue
            if h.get(H_ASSET, asset.encode()).decode() != asset:
                continue
            tp = h.get(H_TRACEPARENT, b"").decode()
            aid = h.get(H_ARRIVAL_ID, b"").decode()
            ids.add(aid)
            found.arrivals.append({"topic": m.topic, "partition": m.partition,
                                   "offset": m.offset, "arrival_id": aid, "traceparent": tp})
            trace_id = trace_id_of(tp.encode())
            if trace_id is not None:
                found.trace_ids[trace_id] = is_sampled(tp.encode())
        ledger = validated(await read_ledger(t, runs_topic(settings.namespace)))
    finally:
        await t.close()
    seen: set[str] = set()
    frontier = True
    while frontier:  # follow outputs downstream until no new run consumes them
        frontier = False
        for r in ledger.values():
            if r.run_id in seen:
                continue
            if any(i.arrival_id in ids or (i.asset == asset and i.partition == key)
                   for i in r.inputs):
                seen.add(r.run_id)
                found.runs.append(r)
                ids.update(r.outputs)
                frontier = True
                if r.trace_id:
                    found.trace_ids.setdefault(r.trace_id, False)
    found.runs.sort(key=lambda r: r.started_ms)
    return found
