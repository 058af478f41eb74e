"""Exactly once on Kafka under chaos (issue #5): two ``streamflow worker --exactly-once``
processes run orders → price → settle ⟵ payments → PostgreSQL (and priced → a ``kafka`` sink
to a topic of the same cluster, issue #17) while arrivals flow in at a
steady rate for 160 s, with poison mixed in. Meanwhile, at seeded times: a worker is SIGKILLed
and restarted with the crash-before-commit hook, so it kills itself between a produce and its
commit, then restarted again; the other worker is SIGKILLed and restarted; the broker is
hard-stopped and restarted; a third worker joins and leaves with SIGTERM. Then every output
must be there exactly once and every poison record dead-lettered exactly once.

``STREAMFLOW_CHAOS_SEED`` replays a run; ``STREAMFLOW_CHAOS_REPORT=path`` writes the report.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from streamflow.devservices import delete_topics

from .conftest import write_report
from .feed import Feeder, KafkaInput, make_plan, partition_of
from .harness import CommitWatch, Fleet, broker_pid, jsonable, kafka_lag, restart_broker
from .oracle import check, drop_table, judge, open_transactions, read_kafka, read_pg
from .scenario import Chaos

pytestmark = [pytest.mark.chaos, pytest.mark.kafka]
log = logging.getLogger("chaos")

PARTITIONS = 4
FLOW_S = 160.0
ORDERS = 30_000  # plus ~27,000 payments and the poison: ~58,000 records
POISON = 1_100
OVERSIZED = 60
EXPORT = "export.priced"  # the kafka sink's topic (of priced orders), on the same cluster


@pytest.mark.timeout(900)
async def test_exactly_once_on_kafka_through_kills_a_broker_restart_and_scaling(
        kafka_bootstrap: str, pg_dsn: str, chaos_seed: int, tmp_path: Path) -> None:
    logging.getLogger("chaos").setLevel(logging.INFO)
    logging.getLogger("httpx").setLevel(logging.WARNING)
    rnd = random.Random(chaos_seed)
    ns = "c" + uuid.uuid4().hex[:10]
    table = f"{ns}_settled"
    plan = make_plan(chaos_seed, ORDERS, POISON, oversized=OVERSIZED)
    env = {"STREAMFLOW_NAMESPACE": ns, "STREAMFLOW_PARTITIONS": str(PARTITIONS),
           "STREAMFLOW_DRAIN_TIMEOUT_S": "20", "STREAMFLOW_MAX_RECORD_BYTES": "262144",
           "CHAOS_PG_DSN": pg_dsn, "CHAOS_PG_TABLE": table,
           "CHAOS_EXPORT_BOOTSTRAP": kafka_bootstrap, "CHAOS_EXPORT_TOPIC": f"{ns}.{EXPORT}"}
    inputs = {f"{ns}.stage.price": [f"{ns}.orders"],
              f"{ns}.stage.settle": [f"{ns}.priced", f"{ns}.payments"],
              f"{ns}.sink.pg-settled": [f"{ns}.settled"],
              f"{ns}.sink.kafka-priced": [f"{ns}.priced"]}
    fleet = Fleet(tmp_path, env, kafka_bootstrap)
    watch = CommitWatch(list(inputs), kafka=kafka_bootstrap)
    source = KafkaInput(kafka_bootstrap, ns, PARTITIONS)
    feeder = Feeder(plan, len(plan.events) / FLOW_S)
    chaos = Chaos(fleet, watch, feeder, rnd)
    started = time.time()
    feeding: asyncio.Task[None] | None = None
    report: dict[str, Any] = {"seed": chaos_seed, "namespace": ns, "transport": "kafka"}
    try:
        await create_topics(kafka_bootstrap, [f"{ns}.{EXPORT}"], PARTITIONS)
        w1 = fleet.start("w1")
        await fleet.wait_ready(w1)
        await fleet.wait_ready(fleet.start("w2"))
        await _balanced(fleet, f"{ns}.stage.price")
        watch.start()
        await source.start()
        feeding = asyncio.create_task(feeder.run(source.send))
        chaos.t0 = feeder.started = time.time()

        steps = ["kills", "kill", "broker", "scale"]
        rnd.shuffle(steps)
        first, second = rnd.sample(["w1", "w2"], 2)
        await chaos.gap(6, 10)
        for step in steps:
            await chaos.gap(3, 12)
            if step == "kills":
                await chaos.kill_before_commit(first)
            elif step == "kill":
                await chaos.kill(second)
            elif step == "broker":
                await chaos.broker()
            else:
                await chaos.scale("w3")
        await feeding
        report["flow_s"] = round(feeder.finished - feeder.started, 1)
        report["drain_s"] = await _drain(kafka_bootstrap, inputs, fleet)
        for wid, proc in list(fleet.current.items()):
            chaos.exits[wid] = await fleet.terminate(proc)
        report.update(judge(plan, await read_kafka(kafka_bootstrap, ns, (EXPORT,)),
                            await read_pg(pg_dsn, table),
                            lambda key: partition_of(key, PARTITIONS)))
        report["open_transactions"] = await open_transactions(kafka_bootstrap, ns, (EXPORT,))
    finally:
        report.update({"faults": jsonable(chaos.faults), "recovery_s": chaos.recovery,
                       "broker_recovery_s": chaos.broker_recovery_s,
                       "exit_codes": chaos.exits, "input_send_errors": source.errors,
                       "input_paused_s": round(feeder.paused_s, 1),
                       "commit_watch_errors": watch.errors,
                       "suite_s": round(time.time() - started, 1)})
        if feeding is not None and not feeding.done():
            feeding.cancel()
        write_report(None, report)
        if broker_pid() is None:  # failed while the broker was down: others need it back
            await restart_broker()
        await fleet.close()
        await watch.stop()
        await source.stop()
        if os.environ.get("STREAMFLOW_CHAOS_KEEP") != "1":
            await delete_topics(kafka_bootstrap, lambda t: t.startswith(ns + "."))
            await drop_table(pg_dsn, table)
    print(f"\nchaos report (kafka, seed {chaos_seed}): "
          f"{ {k: report.get(k) for k in ('records', 'lost', 'duplicated', 'unexpected')} } "
          f"recovery_s={report['recovery_s']} faults={[f['fault'] for f in chaos.faults]}")
    check(report, kills=3)
    assert report["outputs"]["exported"]["lost"] == 0, "the kafka sink's topic was judged"
    assert not report["open_transactions"], report["open_transactions"]
    assert report["exit_codes"] == {"w1": 0, "w2": 0, "w3": 0}, report["exit_codes"]


async def create_topics(bootstrap: str, names: list[str], partitions: int) -> None:
    """The kafka sink writes an existing topic (as a user's would be)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(n, partitions, 1) for n in names])
    finally:
        await admin.close()


async def _balanced(fleet: Fleet, group: str, timeout: float = 60) -> None:
    """Both workers own part of the group (the join's rebalance is over)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        owned = [p.assignments.get(group, []) for p in fleet.current.values()]
        if all(owned) and sorted(p for ps in owned for p in ps) == list(range(PARTITIONS)):
            return
        await asyncio.sleep(0.2)
    raise AssertionError(f"partitions not shared after {timeout}s: "
                         f"{[p.assignments for p in fleet.current.values()]}")


async def _drain(bootstrap: str, inputs: dict[str, list[str]], fleet: Fleet,
                 timeout: float = 180) -> float:
    """Wait until every group has committed all its input (twice in a row)."""
    t0 = time.monotonic()
    clean = 0
    lag = -1
    while time.monotonic() - t0 < timeout:
        fleet.check_alive()
        with contextlib.suppress(Exception):
            lag = await kafka_lag(bootstrap, inputs)
            clean = clean + 1 if lag == 0 else 0
            if clean >= 2:
                return round(time.monotonic() - t0, 1)
        await asyncio.sleep(1)
    raise AssertionError(f"still {lag} records behind after {timeout}s")
