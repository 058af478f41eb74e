"""Exactly once and at least once on Kafka under chaos (issue #5, issue 17 items 7 and 8).

Two fleets of two ``streamflow worker`` processes, one ``--exactly-once`` and one in the
default at-least-once mode, each in its own namespace, run orders → price → settle ⟵ payments
→ PostgreSQL (and priced → a ``kafka`` sink to a topic of the same cluster) while the same
arrivals flow into both at a steady rate for 160 s, with poison mixed in. Meanwhile, at seeded
times: a worker is SIGKILLed and restarted with the crash-before-commit hook, so it kills itself
between a produce and its commit, then restarted again; the other worker is SIGKILLed and
restarted; the broker is hard-stopped and restarted; a third worker joins and leaves with
SIGTERM. The at-least-once fleet's worker of the same id is SIGKILLed and restarted after
each kill of the exactly-once fleet, once that one has recovered (plain SIGKILLs: its commits
have no crash hook); the broker kill hits both; the join is the exactly-once fleet's only.

Then every exactly-once output must be there exactly once and every poison record
dead-lettered exactly once. At least once, nothing may be lost, the PostgreSQL table holds each
key once, and each kill duplicates at most the inputs it left uncommitted (``alo.py``; the
per-kill table is printed).

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
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from streamflow.devservices import delete_topics

from .alo import INPUTS, OUTPUTS, AtLeastOnce, check_at_least_once, per_kill, table
from .conftest import write_report
from .feed import Event, Feeder, KafkaInput, Plan, make_plan, partition_of
from .harness import CommitWatch, Fleet, broker_pid, jsonable, kafka_lag, restart_broker
from .oracle import (
    check,
    drop_table,
    judge,
    open_transactions,
    read_kafka,
    read_messages,
    read_pg,
)
from .scenario import Chaos

pytestmark = [pytest.mark.chaos, pytest.mark.kafka]
log = logging.getLogger("chaos")

PARTITIONS = 4
FLOW_S = 160.0
ORDERS = 30_000  # plus ~27,000 payments and the poison: ~58,000 records
POISON = 1_100
OVERSIZED = 60
EXPORT = "export.priced"  # the kafka sink's topic (of priced orders), on the same cluster
POLL_BATCH = 500  # the workers' poll_batch (the default), for the per-kill table
# What a group may redo at the rebalances a kill's restart causes (with static membership,
# none to two were seen): the batch in hand of each of its two consumers, at up to three.
IN_HAND = POLL_BATCH * 2 * 3


@dataclass
class Side:
    """One fleet of the scenario: its namespace, table, groups, workers and input."""

    ns: str
    table: str
    inputs: dict[str, list[str]]
    fleet: Fleet
    watch: CommitWatch
    source: KafkaInput


def _side(bootstrap: str, pg_dsn: str, workdir: Path, exactly_once: bool) -> Side:
    ns = "c" + uuid.uuid4().hex[:10]
    env = {"STREAMFLOW_NAMESPACE": ns, "STREAMFLOW_PARTITIONS": str(PARTITIONS),
           "STREAMFLOW_DRAIN_TIMEOUT_S": "20", "STREAMFLOW_MAX_RECORD_BYTES": "262144",
           "CHAOS_PG_DSN": pg_dsn, "CHAOS_PG_TABLE": f"{ns}_settled",
           "CHAOS_EXPORT_BOOTSTRAP": bootstrap, "CHAOS_EXPORT_TOPIC": f"{ns}.{EXPORT}"}
    inputs = {f"{ns}.stage.price": [f"{ns}.orders"],
              f"{ns}.stage.settle": [f"{ns}.priced", f"{ns}.payments"],
              f"{ns}.sink.pg-settled": [f"{ns}.settled"],
              f"{ns}.sink.kafka-priced": [f"{ns}.priced"]}
    workdir.mkdir(parents=True, exist_ok=True)
    return Side(ns, f"{ns}_settled", inputs,
                Fleet(workdir, env, bootstrap, exactly_once=exactly_once),
                CommitWatch(list(inputs), kafka=bootstrap),
                KafkaInput(bootstrap, ns, PARTITIONS))


@pytest.mark.timeout(900)
async def test_exactly_once_and_at_least_once_on_kafka_through_kills_a_broker_restart(
        kafka_bootstrap: str, pg_dsn: str, chaos_seed: int, tmp_path: Path) -> None:
    logging.getLogger("chaos").setLevel(logging.INFO)
    logging.getLogger("httpx").setLevel(logging.WARNING)
    rnd = random.Random(chaos_seed)
    plan = make_plan(chaos_seed, ORDERS, POISON, oversized=OVERSIZED)
    eos = _side(kafka_bootstrap, pg_dsn, tmp_path / "eos", exactly_once=True)
    alo = _side(kafka_bootstrap, pg_dsn, tmp_path / "alo", exactly_once=False)
    feeder = Feeder(plan, len(plan.events) / FLOW_S)
    twin = AtLeastOnce(alo.fleet, alo.watch)
    chaos = Chaos(eos.fleet, eos.watch, feeder, rnd, twin)
    started = time.time()
    feeding: asyncio.Task[None] | None = None
    report: dict[str, Any] = {"seed": chaos_seed, "namespace": eos.ns, "transport": "kafka"}
    try:
        feeding = await _start(kafka_bootstrap, (eos, alo), feeder, chaos)
        await _faults(chaos, rnd)
        await feeding
        report["flow_s"] = round(feeder.finished - feeder.started, 1)
        report["drain_s"], report["at_least_once_drain_s"] = await asyncio.gather(
            _drain(kafka_bootstrap, eos.inputs, eos.fleet),
            _drain(kafka_bootstrap, alo.inputs, alo.fleet))
        report["at_least_once"] = await _finish(kafka_bootstrap, pg_dsn, plan, (eos, alo),
                                                chaos, report)
    finally:
        report.update({"faults": jsonable(chaos.faults), "recovery_s": chaos.recovery,
                       "broker_recovery_s": chaos.broker_recovery_s,
                       "exit_codes": chaos.exits,
                       "input_send_errors": eos.source.errors + alo.source.errors,
                       "input_paused_s": round(feeder.paused_s, 1),
                       "commit_watch_errors": eos.watch.errors,
                       "suite_s": round(time.time() - started, 1)})
        if feeding is not None and not feeding.done():
            feeding.cancel()
        write_report(None, report)
        if broker_pid() is None:  # failed while the broker was down: others need it back
            await restart_broker()
        for side in (eos, alo):
            await _close(kafka_bootstrap, pg_dsn, side)
    print(f"\nchaos report (kafka, seed {chaos_seed}): "
          f"{ {k: report.get(k) for k in ('records', 'lost', 'duplicated', 'unexpected')} } "
          f"recovery_s={report['recovery_s']} faults={[f['fault'] for f in chaos.faults]}")
    print(f"at least once ({alo.ns}), per kill:\n{report['at_least_once']['table']}")
    check(report, kills=3)
    assert report["outputs"]["exported"]["lost"] == 0, "the kafka sink's topic was judged"
    assert not report["open_transactions"], report["open_transactions"]
    assert report["exit_codes"] == {"w1": 0, "w2": 0, "w3": 0}, report["exit_codes"]
    # Three worker kills (the hook's kill brings a second one) and the broker's.
    check_at_least_once(report["at_least_once"], kills=4)
    assert report["at_least_once"]["outputs"]["exported"]["lost"] == 0
    assert report["at_least_once"]["exit_codes"] == {"w1": 0, "w2": 0}


async def _start(bootstrap: str, sides: tuple[Side, Side], feeder: Feeder,
                 chaos: Chaos) -> asyncio.Task[None]:
    """Both fleets up (two workers each, partitions shared), then the input flowing into both
    namespaces alike."""
    for side in sides:
        await create_topics(bootstrap, [f"{side.ns}.{EXPORT}"], PARTITIONS)
    for wid in ("w1", "w2"):
        await asyncio.gather(*(s.fleet.wait_ready(s.fleet.start(wid)) for s in sides))
    for side in sides:
        await _balanced(side.fleet, f"{side.ns}.stage.price")
        side.watch.start()
        await side.source.start()

    async def send(chunk: list[Event]) -> None:
        await asyncio.gather(*(s.source.send(chunk) for s in sides))

    feeding = asyncio.create_task(feeder.run(send))
    chaos.t0 = feeder.started = time.time()
    assert chaos.alo is not None
    chaos.alo.t0 = chaos.t0
    return feeding


async def _faults(chaos: Chaos, rnd: random.Random) -> None:
    """The seeded schedule: a kill plus the crash hook, a kill, the broker, a worker joining
    and leaving (the exactly-once fleet only: a join is no kill)."""
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


async def _finish(bootstrap: str, pg_dsn: str, plan: Plan, sides: tuple[Side, Side],
                  chaos: Chaos, report: dict[str, Any]) -> dict[str, Any]:
    """Stop both fleets, judge the exactly-once outputs into ``report``; the at-least-once
    judgement (its per-kill table included) is returned."""
    eos, alo = sides
    assert chaos.alo is not None
    for side in sides:
        for wid, proc in list(side.fleet.current.items()):
            rc = await side.fleet.terminate(proc)
            if side is eos:
                chaos.exits[wid] = rc
            else:
                report.setdefault("at_least_once_exit_codes", {})[wid] = rc
    await chaos.alo.settled()
    part = partial(partition_of, partitions=PARTITIONS)
    report.update(judge(plan, await read_kafka(bootstrap, eos.ns, (EXPORT,)),
                        await read_pg(pg_dsn, eos.table), part))
    report["open_transactions"] = await open_transactions(bootstrap, eos.ns, (EXPORT,))
    msgs = await read_messages(bootstrap, alo.ns, (*INPUTS, *OUTPUTS))
    rows = {name: [orjson.loads(m.value) for m in msgs[name]] for name in OUTPUTS}
    out = judge(plan, rows, await read_pg(pg_dsn, alo.table), part)
    out["namespace"] = alo.ns
    out["kills"] = per_kill(chaos.alo.kills, alo.inputs, alo.ns, msgs, part, IN_HAND)
    out["table"] = table(out["kills"], POLL_BATCH, PARTITIONS)
    out["exit_codes"] = report.get("at_least_once_exit_codes", {})
    return out


async def _close(bootstrap: str, pg_dsn: str, side: Side) -> None:
    await side.fleet.close()
    await side.watch.stop()
    await side.source.stop()
    if os.environ.get("STREAMFLOW_CHAOS_KEEP") != "1":
        await delete_topics(bootstrap, lambda t: t.startswith(side.ns + "."))
        await drop_table(pg_dsn, side.table)


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
