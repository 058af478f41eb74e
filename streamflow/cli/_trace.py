"""``streamflow trace <asset> <key-or-partition>``: print the runs that touched a record and
its traces, as :func:`streamflow.ops.find_record` finds them."""

from __future__ import annotations

import argparse
import asyncio
import os
from collections import Counter

import orjson

from streamflow.errors import OpsError
from streamflow.model import Settings
from streamflow.observability import JSpan, get_trace, trace_id_of, tree_lines
from streamflow.ops import find_record

DEFAULT_JAEGER = "http://127.0.0.1:16686"


def _trace(args: argparse.Namespace) -> int:
    settings = Settings.load(kafka_bootstrap=args.kafka, state_dir=args.state_dir,
                             namespace=args.namespace)
    found = asyncio.run(find_record(settings, args.asset, args.key))
    if not found.arrivals and not found.runs:
        raise OpsError(
            f"no arrival of asset {args.asset!r} with key or partition {args.key!r} on "
            f"{settings.transport} (namespace {settings.namespace!r}). Check the asset name "
            "(`streamflow runs list` shows stages and partitions) and --namespace/--kafka.")
    jaeger = args.jaeger.rstrip("/")
    traces: dict[str, list[JSpan]] = {}
    for tid in found.trace_ids:
        try:
            traces[tid] = get_trace(jaeger, tid)
        except OSError as e:
            raise OpsError(f"cannot reach Jaeger at {jaeger} ({e}); start it with "
                           "`streamflow services up jaeger` or pass --jaeger") from e
    if args.json:
        print(orjson.dumps({
            "arrivals": found.arrivals,
            "runs": [r.model_dump() for r in found.runs],
            "traces": {tid: {"url": f"{jaeger}/trace/{tid}", "spans": [
                {"span_id": s.span_id, "parent_id": s.parent_id, "name": s.name,
                 "kind": s.kind, "status_code": s.status_code,
                 "links": [list(lk) for lk in s.links]} for s in spans]}
                for tid, spans in traces.items()},
        }, option=orjson.OPT_INDENT_2).decode())
        return 0
    print(f"{args.asset} {args.key!r}: {len(found.arrivals)} arrival(s), "
          f"{len(found.runs)} run(s)")
    own = {trace_id_of(str(a["traceparent"]).encode()) for a in found.arrivals}
    for r in found.runs:
        counts = Counter(f"{i.asset}:{i.partition}" for i in r.inputs)
        ins = ", ".join(k if n == 1 else f"{k} (x{n})" for k, n in counts.items())
        print(f"  run {r.run_id} stage {r.stage} [{r.status}, attempt {r.attempt}] <- {ins}")
    for tid, spans in traces.items():
        whose = "the record's own trace" if tid in own else ", ".join(
            f"run of {r.stage}" for r in found.runs if r.trace_id == tid) or "a related trace"
        print(f"\ntrace {tid} ({whose})  {jaeger}/trace/{tid}")
        if not spans:
            why = "recorded unsampled" if not found.trace_ids[tid] else "not in Jaeger (yet)"
            print(f"  no spans: {why}; OTEL_TRACES_SAMPLER_ARG sets the sampling ratio, and "
                  "failures are exported whatever it is")
        for line in tree_lines(spans):
            print("  " + line)
    return 0


def add_trace_cli(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    tr = sub.add_parser(
        "trace", help="the runs that touched a record, and its span tree from Jaeger",
        description="Find a record's arrivals (by key or partition key) on its asset's topic, "
        "the runs that consumed it and everything downstream, and print each trace's span tree "
        "(links included) with its Jaeger URL.")
    tr.add_argument("asset", help="asset name, e.g. pos_sales")
    tr.add_argument("key", help="the record's key or partition key, e.g. S1-0001")
    tr.add_argument("--jaeger", default=os.environ.get("STREAMFLOW_JAEGER_URL", DEFAULT_JAEGER),
                    help=f"Jaeger query URL (default {DEFAULT_JAEGER}, or STREAMFLOW_JAEGER_URL)")
    tr.add_argument("--kafka", metavar="BOOTSTRAP", help="Kafka bootstrap servers (default: "
                    "STREAMFLOW_KAFKA_BOOTSTRAP, else the embedded log)")
    tr.add_argument("--state-dir", help="embedded log location (default .streamflow)")
    tr.add_argument("--namespace", help="topic prefix (default sf)")
    tr.add_argument("--json", action="store_true", help="machine-readable output")
    tr.set_defaults(func=_trace)
