"""StreamFlow in the peers benchmark: a Pipeline run by a Worker on Kafka, until SIGTERM.

The inputs are assets whose arrivals the benchmark published (an ``IdleSource`` stands in for
their source); ``OnEach`` stages for passthrough and map, an ``AllOf`` barrier for the join.
Settings are the shipped defaults apart from where (bootstrap, namespace, state dir), the HTTP
port (off, so runs cannot collide) and, for the ``exactly-once`` row, ``exactly_once``.
"""

from __future__ import annotations

import asyncio
import signal
import sys
from pathlib import Path
from typing import Any

from streamflow import AllOf, Asset, Inputs, Pipeline, Settings, Worker
from streamflow.connectors.testing import IdleSource

from ._peers_common import Payment, Priced, Sale, Settled, Spec, price, settle


def passthrough(s: Sale) -> Sale:
    return s


def join(inputs: Inputs) -> Settled:
    s, p = inputs["sales"], inputs["payments"]
    assert isinstance(s, Sale) and isinstance(p, Payment)
    return settle(s, p)


def pipeline(workload: str) -> Pipeline:
    p = Pipeline("peers")
    if workload == "join":
        sales = Asset("sales", Sale, key="id")
        payments = Asset("payments", Payment, key="id")
        out: Asset[Any] = Asset("out", Settled, key="id")
        p.source(IdleSource(), asset=sales, name="sales-src")
        p.source(IdleSource(), asset=payments, name="payments-src")
        p.stage(inputs=[sales, payments], output=out, name="settle", trigger=AllOf())(join)
        return p
    src = Asset("in", Sale, key="id")
    p.source(IdleSource(), asset=src)
    if workload == "passthrough":
        p.stage(inputs=[src], output=Asset("out", Sale, key="id"), name="pass")(passthrough)
    else:  # map, and the latency runs
        p.stage(inputs=[src], output=Asset("out", Priced, key="id"), name="price")(price)
    return p


def settings(spec: Spec) -> Settings:
    extra: dict[str, Any] = {}
    if spec.settings == "exactly-once":
        if "exactly_once" not in Settings.model_fields:
            raise SystemExit("this StreamFlow has no exactly_once setting")
        extra["exactly_once"] = True
    return Settings(kafka_bootstrap=spec.bootstrap, namespace=spec.ns,
                    partitions=spec.partitions, state_dir=Path(f"/tmp/{spec.ns}"), http_port=None,
                    **extra)


async def _main(spec: Spec) -> None:
    worker = Worker(pipeline(spec.workload), settings(spec))
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, worker.request_stop)
    loop.add_signal_handler(signal.SIGINT, worker.request_stop)
    summary = await worker.run()
    print(f"streamflow: {summary.to_json()}", file=sys.stderr)


def main(spec: Spec) -> None:
    asyncio.run(_main(spec))
