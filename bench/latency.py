"""Arrival-to-fire latency of a two-input barrier on Kafka, under an open-loop arrival rate.

Each partition key gets two arrivals (one per input); the barrier completes on the second.
Every arrival carries the nanosecond time stamped just before it is handed to the producer;
latency is measured at the entry of the stage run, from the completing arrival's stamp. The
first 5 s are warm-up and discarded. Tracing is off; everything else is at shipped defaults.
The load generator shares the worker's process and event loop (its cost is in the figures).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import time
import uuid
from typing import Any

from aiokafka import AIOKafkaProducer
from aiokafka.partitioner import murmur2
from pydantic import BaseModel

from streamflow import AllOf, Arrival, Asset, Inputs, Pipeline, Settings, Worker, stable_id
from streamflow import devservices as services
from streamflow.connectors.testing import IdleSource
from streamflow.devservices import delete_topics

WARMUP_S = 5.0


class Ping(BaseModel):
    id: str
    k: str
    sent_ns: int


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--rate", type=float, default=1000.0, help="arrivals per second")
    parser.add_argument("--seconds", type=float, default=30.0, help="total, warm-up included")
    parser.add_argument("--partitions", type=int, default=4)


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))]


async def run(args: argparse.Namespace) -> dict[str, Any]:
    os.environ.pop("OTEL_EXPORTER_OTLP_ENDPOINT", None)
    os.environ.pop("OTEL_TRACES_EXPORTER", None)
    services.up(["kafka"])
    ns = "bench" + uuid.uuid4().hex[:8]
    settings = Settings(kafka_bootstrap=services.KAFKA_BOOTSTRAP, namespace=ns,
                        partitions=args.partitions, state_dir=f"/tmp/{ns}")
    a = Asset("a", Ping, key="id", partition_by="k")
    b = Asset("b", Ping, key="id", partition_by="k")
    latencies: list[tuple[int, float]] = []

    p = Pipeline("latency")
    p.source(IdleSource(), asset=a, name="src-a")
    p.source(IdleSource(), asset=b, name="src-b")

    @p.stage(inputs=[a, b], trigger=AllOf(), name="barrier")
    def barrier(inputs: Inputs) -> None:
        now = time.time_ns()
        stamp = max(x.sent_ns for x in inputs.values() if isinstance(x, Ping))
        latencies.append((stamp, (now - stamp) / 1e6))

    worker = Worker(p, settings)
    task = asyncio.create_task(worker.run())
    await asyncio.sleep(6)  # topics created, consumers joined
    producer = AIOKafkaProducer(bootstrap_servers=services.KAFKA_BOOTSTRAP, acks="all",
                                enable_idempotence=True, linger_ms=0)
    await producer.start()
    total = int(args.rate * args.seconds)
    print(f"latency: {total} arrivals at {args.rate:.0f}/s for {args.seconds:.0f}s "
          f"(first {WARMUP_S:.0f}s discarded)", file=sys.stderr)
    start = time.perf_counter()
    start_ns = time.time_ns()
    sent = 0
    for i in range(total):
        due = start + i / args.rate  # open loop: the schedule never waits for the system
        delay = due - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        key = f"k{i // 2}"
        asset = a if i % 2 == 0 else b
        stamp = time.time_ns()
        model = Ping(id=f"{asset.name}-{key}", k=key, sent_ns=stamp)
        arr = Arrival(stable_id(asset.name, key), asset.name, key, 1, stamp // 1_000_000,
                      "bench", "live", model.id.encode(), model.model_dump_json().encode())
        msg = arr.message(f"{ns}.{asset.name}")
        part = (murmur2(key.encode()) & 0x7FFFFFFF) % args.partitions
        await producer.send(msg.topic, msg.value, key=msg.key, headers=msg.headers,
                            partition=part)
        sent += 1
    send_elapsed = time.perf_counter() - start
    await producer.flush()
    await producer.stop()
    warm_end_ns = start_ns + int(WARMUP_S * 1e9)
    expected = sum(1 for i in range(1, total, 2) if i / args.rate >= WARMUP_S)
    deadline = time.perf_counter() + 30
    while time.perf_counter() < deadline:
        if sum(1 for s, _ in latencies if s >= warm_end_ns) >= expected:
            break
        await asyncio.sleep(0.2)
    worker.request_stop()
    await task
    await delete_topics(services.KAFKA_BOOTSTRAP, lambda t: t.startswith(ns + "."))
    measured = [ms for s, ms in latencies if s >= warm_end_ns]
    achieved = sent / send_elapsed
    p99 = percentile(measured, 0.99)
    met = (p99 is not None and p99 <= 20 and abs(achieved - args.rate) <= 0.02 * args.rate
           and len(measured) >= expected)
    return {
        "rate": args.rate, "seconds": args.seconds, "transport": "kafka",
        "count": len(measured), "expected": expected, "achieved_rate": round(achieved, 1),
        "p50_ms": _r(percentile(measured, 0.50)), "p99_ms": _r(p99),
        "p999_ms": _r(percentile(measured, 0.999)),
        "mean_ms": _r(statistics.fmean(measured)) if measured else None,
        "target": "p99_ms <= 20 with achieved_rate within 2% of the rate asked",
        "met": met,
    }


def _r(v: float | None) -> float | None:
    return None if v is None else round(v, 2)
