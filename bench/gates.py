"""What a quality gate costs: a Kafka map stage, with and without five record checks on its
input.

The stage's input asset topic is filled with arrivals before the worker starts, and the worker
runs only the stage (no source), so both variants drain the same backlog in full batches. With
a source in the same process, the two compete for the event loop, and the batch sizes, not
the stage's cost, decide the figure. Variants are interleaved within each repeat, in rotating
order; the median is reported. Throughput is measured on the output topic from 2% to 100% of
the records (start-up and group joins excluded). Beside it, the checks alone are timed
in-process (``run_checks`` per record, as a per-record stage calls it). Every run's output is
read back: a record lost or duplicated in any run makes ``met`` false.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
import uuid
from typing import Any

from streamflow import Arrival, Asset, Pipeline, Settings, Worker, stable_id
from streamflow import devservices as services
from streamflow.connectors.testing import IdleSource
from streamflow.devservices import delete_topics
from streamflow.gates import AllowedValues, Check, Expect, NotNull, Pattern, Range
from streamflow.model import run_checks

from ._readback import output_problems
from .tracing import Filling, Priced, Sale, _watch, fill_topic, price

VARIANTS = ("plain", "gated")


def checks() -> list[Check]:
    return [NotNull("amount"), Range("quantity", min=1, max=100),
            AllowedValues("currency", {"EUR", "USD", "GBP"}), Pattern("sku", r"sku-\d+"),
            Expect(lambda s: s.amount < 10_000, "plausible amount")]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--records", type=int, default=20_000, help="records per run")
    parser.add_argument("--repeats", type=int, default=3, help="runs of each variant")
    parser.add_argument("--partitions", type=int, default=4)


def _arrivals(n: int) -> Filling:
    """Arrivals of the ``sales`` asset, as a source would have published them."""
    for i in range(n):
        sale = Sale(id=f"S{i:08d}", store=f"store-{i % 40}", sku=f"sku-{i % 5000}",
                    quantity=1 + i % 5, amount=round(1 + (i * 7919) % 500, 2),
                    currency="EUR", sold_at="2026-11-25T10:00:00Z")
        arr = Arrival(stable_id("sales", i), "sales", sale.id, 1, 0, "bench", "live",
                      sale.id.encode(), sale.model_dump_json().encode())
        yield arr.value, sale.id.encode(), arr.headers()


async def _run(variant: str, bootstrap: str, n: int, parts: int) -> tuple[float, list[str]]:
    """(records/s, what the run lost or duplicated)."""
    ns = "bench" + uuid.uuid4().hex[:8]
    await fill_topic(bootstrap, f"{ns}.sales", parts, _arrivals(n))
    sales = Asset("sales", Sale, key="id")
    priced = Asset("priced", Priced, key="id")
    p = Pipeline("gates-bench")
    p.source(IdleSource(), asset=sales)
    p.stage(inputs=[sales], output=priced, name="price",
            checks=checks() if variant == "gated" else ())(price)
    settings = Settings(kafka_bootstrap=bootstrap, namespace=ns, partitions=parts,
                        state_dir=f"/tmp/{ns}", http_port=None)
    worker = Worker(p, settings)
    done = asyncio.Event()
    watch = asyncio.create_task(_watch(bootstrap, f"{ns}.priced", n, parts, done))
    run = asyncio.create_task(worker.run())
    rps = await watch
    worker.request_stop()
    await run
    bad = await output_problems(bootstrap, f"{ns}.priced", parts, n)
    await delete_topics(bootstrap, lambda t: t.startswith(ns + "."))
    return rps, bad


def _checks_alone(n: int) -> float:
    """Microseconds per record for the five checks, one record per call."""
    records = [Sale(id=f"S{i}", store="s", sku=f"sku-{i}", quantity=1 + i % 5,
                    amount=12.5, currency="EUR", sold_at="2026-11-25T10:00:00Z")
               for i in range(n)]
    cs = checks()
    t0 = time.perf_counter()
    for r in records:
        run_checks(cs, [r], ())
    return (time.perf_counter() - t0) / n * 1e6


async def run(args: argparse.Namespace) -> dict[str, Any]:
    services.up(["kafka"])
    bootstrap = services.KAFKA_BOOTSTRAP
    results: dict[str, list[float]] = {v: [] for v in VARIANTS}
    lost: list[str] = []  # what any run lost or duplicated: then nothing here counts
    for r in range(args.repeats):
        for v in VARIANTS[r % 2:] + VARIANTS[:r % 2]:
            rps, bad = await _run(v, bootstrap, args.records, args.partitions)
            results[v].append(rps)
            lost += [f"{v} repeat {r + 1}: {b}" for b in bad]
            print(f"gates: repeat {r + 1}/{args.repeats} {v:>5}: {rps:,.0f} records/s"
                  f"{' (' + '; '.join(bad) + ')' if bad else ''}", file=sys.stderr)
    med = {v: statistics.median(xs) for v, xs in results.items()}
    ratio = med["gated"] / med["plain"]
    return {
        "records": args.records, "repeats": args.repeats, "partitions": args.partitions,
        "plain_rps": round(med["plain"]), "gated_rps": round(med["gated"]),
        "ratio": round(ratio, 3), "checks_us_per_record": round(_checks_alone(20_000), 2),
        "runs": {v: [round(x) for x in xs] for v, xs in results.items()},
        "lost_or_duplicated": lost,
        "target": "a per-record stage with five checks keeps >= 0.85 of its throughput, and "
                  "no run lost or duplicated a record",
        "met": ratio >= 0.85 and not lost,
    }
