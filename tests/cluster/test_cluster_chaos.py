"""Exactly once through the loss of a coordinator (issue #19 item 3), on the three-node cluster.

Two ``streamflow worker --exactly-once`` processes run the chaos pipeline of ``tests/chaos``
(orders → price → settle ⟵ payments → PostgreSQL, priced → a ``kafka`` sink) while its input
flows at a steady rate, poison mixed in, never paused. Meanwhile: the broker that coordinates
the price stage's consumer group is SIGKILLed and restarted; once every replica is back in
sync, the transaction coordinator of one of that stage's transactional ids (one per input
partition) is SIGKILLed and restarted. Every topic has three replicas, a write needs two, and
no out-of-sync replica may lead, so each loss must lose and duplicate nothing: every output is
there exactly once and every poison record dead-lettered once, judged by the oracle of
``tests/chaos``. ``STREAMFLOW_CHAOS_REPORT=path`` writes the report under ``"cluster"``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from functools import partial
from pathlib import Path
from typing import Any

import pytest
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError

from streamflow import devservices as services
from streamflow.devservices import _kafka_cluster as cluster
from streamflow.transports.kafka import KafkaTransport
from tests.chaos.conftest import write_report
from tests.chaos.feed import Event, Feeder, make_plan, partition_of
from tests.chaos.harness import CommitWatch, jsonable
from tests.chaos.oracle import check, judge, open_transactions, read_kafka, read_pg
from tests.chaos.scenario import Chaos
from tests.chaos.test_chaos_kafka import EXPORT, PARTITIONS, Side, _balanced, _close, _drain, _side

pytestmark = pytest.mark.cluster
log = logging.getLogger("chaos")

FLOW_S = 70.0
ORDERS = 7_000  # plus ~6,300 payments and the poison: ~14,300 records, ~200 a second
POISON = 1_000
OVERSIZED = 30
GROUP, TRANSACTION = 0, 1  # FindCoordinator key types
# A killed broker's coordinators move once the controller fences it (3 s without a
# heartbeat); when it was the active controller too, a new one is elected first and gives the
# brokers a fresh session: about 6 s, then the workers find the new coordinators and commit.
# Runs here took 3-10 s; a worker kill's bound is 10 s.
RECOVERY_BOUND_S = 15.0


class ClusterCommitWatch(CommitWatch):
    """The chaos suite's commit watch, asking each group again at once when a request went
    to the dead node: its client picks a random broker for FindCoordinator, so with one of
    three down, restarting the whole poll at any error (as for a single broker) left it
    blind until the node was back, and every recovery looked as long as the restart.

    The pipeline commits on while a node is down, so a kill's baseline is the first whole
    reading of the group that began after the kill (``recovery_of``), not the readings at
    the restart (the suite's ``recovery``, right for a single broker, where nothing commits)."""

    readings: list[tuple[float, str, dict[tuple[str, str, int], int]]]

    async def recovery_of(self, group: str, at: float, timeout: float = 60) -> float | None:
        """Seconds from ``at`` to the first commit of ``group`` past a whole reading of it
        that began after ``at``. A reading from a coordinator still loading the group may
        lack partitions: it is no baseline (anything would look like a commit past it)."""
        deadline = time.monotonic() + timeout
        base: tuple[float, dict[tuple[str, str, int], int]] | None = None
        while time.monotonic() < deadline:
            known = {k for k in self.offsets if k[0] == group}
            base = base or next(((began, offs) for began, g, offs in self.readings
                                 if g == group and began > at and known <= offs.keys()), None)
            if base is not None:
                for when, g, t, p, off in self.events:
                    if g == group and when > base[0] and off > base[1].get((g, t, p), -1):
                        return round(when - at, 3)
            await asyncio.sleep(0.1)
        return None

    async def _run_kafka(self, bootstrap: str) -> None:
        self.readings = []
        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=2000)
        await admin.start()
        try:
            while True:
                began = time.time()
                complete = True
                for g in self.groups:
                    asked = time.time()
                    got = await self._offsets(admin, g)
                    complete = complete and got is not None
                    for tp, meta in (got or {}).items():
                        self._see(time.time(), g, tp.topic, tp.partition, meta.offset)
                    if got is not None:
                        self.readings.append((asked, g, {(g, tp.topic, tp.partition): m.offset
                                                         for tp, m in got.items()}))
                if complete:
                    self.cycle = (began, dict(self.offsets))
                await asyncio.sleep(0.1)
        finally:
            await admin.close()

    async def _offsets(self, admin: AIOKafkaAdminClient, group: str) -> dict[Any, Any] | None:
        for _ in range(6):
            try:  # a node starting up may take a request and answer late: ask another
                return dict(await asyncio.wait_for(admin.list_consumer_group_offsets(group), 1))
            except Exception:  # the dead node, or its group not yet moved: ask again
                self.errors += 1
        return None


@pytest.mark.timeout(600)
async def test_exactly_once_through_the_group_and_the_transaction_coordinators_kills(
        cluster_bootstrap: str, postgres_dsn: str, chaos_seed: int, tmp_path: Path) -> None:
    logging.getLogger("chaos").setLevel(logging.INFO)
    logging.getLogger("httpx").setLevel(logging.WARNING)
    rnd = random.Random(chaos_seed)
    plan = make_plan(chaos_seed, ORDERS, POISON, oversized=OVERSIZED)
    side = _side(cluster_bootstrap, postgres_dsn, tmp_path / "eos", exactly_once=True)
    side.watch = ClusterCommitWatch(side.watch.groups, kafka=cluster_bootstrap)
    feeder = Feeder(plan, len(plan.events) / FLOW_S)
    chaos = Chaos(side.fleet, side.watch, feeder, rnd)
    started = time.time()
    feeding: asyncio.Task[None] | None = None
    report: dict[str, Any] = {"seed": chaos_seed, "namespace": side.ns,
                              "transport": "kafka", "brokers": len(cluster.NODES)}
    try:
        feeding = await _start(cluster_bootstrap, side, feeder, chaos)
        await _faults(cluster_bootstrap, side, chaos, rnd)
        await feeding
        report["flow_s"] = round(feeder.finished - feeder.started, 1)
        report["drain_s"] = await _drain(cluster_bootstrap, side.inputs, side.fleet)
        await _finish(cluster_bootstrap, postgres_dsn, plan, side, chaos, report)
    finally:
        report.update({"faults": jsonable(chaos.faults), "recovery_s": chaos.recovery,
                       "broker_recovery_s": chaos.broker_recovery_s,
                       "exit_codes": chaos.exits,
                       "input_send_errors": side.source.errors,
                       "input_paused_s": round(feeder.paused_s, 1),
                       "commit_watch_errors": side.watch.errors,
                       "suite_s": round(time.time() - started, 1)})
        if feeding is not None and not feeding.done():
            feeding.cancel()
        write_report("cluster", report)
        try:
            await asyncio.to_thread(services.up, [services.KAFKA_CLUSTER])  # a node left down
        finally:
            await _close(cluster_bootstrap, postgres_dsn, side)
    print(f"\nchaos report (three brokers, seed {chaos_seed}): "
          f"{ {k: report.get(k) for k in ('records', 'lost', 'duplicated', 'unexpected')} } "
          f"recovery_s={report['recovery_s']} faults={report['faults']}")
    check(report, kills=2, recovery_bound_s=RECOVERY_BOUND_S)
    assert report["outputs"]["exported"]["lost"] == 0, "the kafka sink's topic was judged"
    assert not report["open_transactions"], report["open_transactions"]
    assert report["exit_codes"] == {"w1": 0, "w2": 0}, report["exit_codes"]


async def _start(bootstrap: str, side: Side, feeder: Feeder, chaos: Chaos) -> asyncio.Task[None]:
    """Two workers sharing the partitions, then the input flowing. The kafka sink writes an
    existing topic, made as StreamFlow makes its own (the cluster's three replicas)."""
    export = KafkaTransport(bootstrap, partitions=PARTITIONS)
    await export.start()
    try:
        await export.ensure_topics([f"{side.ns}.{EXPORT}"])
    finally:
        await export.close()
    for wid in ("w1", "w2"):
        await side.fleet.wait_ready(side.fleet.start(wid))
    await _balanced(side.fleet, f"{side.ns}.stage.price")
    side.watch.start()
    await side.source.start()

    async def send(chunk: list[Event]) -> None:
        await side.source.send(chunk)

    feeding = asyncio.create_task(feeder.run(send))
    chaos.t0 = feeder.started = time.time()
    return feeding


async def _faults(bootstrap: str, side: Side, chaos: Chaos, rnd: random.Random) -> None:
    """The group coordinator of the price stage, then, the cluster in sync again, the
    transaction coordinator of one of its transactional ids (``<group>.<input partition>``)."""
    group = f"{side.ns}.stage.price"
    await chaos.gap(6, 10)
    await _kill_coordinator(bootstrap, chaos, group, GROUP, group)
    await _in_sync(bootstrap)
    await chaos.gap(2, 5)
    txn_id = f"{group}.{rnd.randrange(PARTITIONS)}"
    await _kill_coordinator(bootstrap, chaos, txn_id, TRANSACTION, group)


async def _coordinator(bootstrap: str, key: str, key_type: int) -> int:
    """The node coordinating ``key``; asked again while the client picks a dead node to ask."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=5000)
    await admin.start()
    try:
        for _ in range(20):
            with contextlib.suppress(KafkaError, TimeoutError):
                return await asyncio.wait_for(admin.find_coordinator(key, key_type), 2)
            await asyncio.sleep(0.1)
        return await admin.find_coordinator(key, key_type)
    finally:
        await admin.close()


async def _kill_coordinator(bootstrap: str, chaos: Chaos, key: str, key_type: int,
                            group: str) -> None:
    """SIGKILL the node coordinating ``key``, restart it after 1-3 s; recovery is the time
    to the stage's next commit (the group's offsets go through the transaction)."""
    node = await _coordinator(bootstrap, key, key_type)
    kind = "group" if key_type == GROUP else "transaction"
    at = time.time()
    await asyncio.to_thread(cluster.kill_node, node)
    entry = chaos._note(f"{kind}-coordinator-sigkill", at, node=node, key=key)
    assert isinstance(chaos.watch, ClusterCommitWatch)
    await asyncio.sleep(chaos.rnd.uniform(1, 3))
    entry["coordinator_after"] = await _coordinator(bootstrap, key, key_type)
    await asyncio.to_thread(services.up, [services.KAFKA_CLUSTER])
    entry["down_s"] = round(time.time() - at, 2)
    entry["recovery_s"] = await chaos.watch.recovery_of(group, at)
    chaos.recovery.append(entry["recovery_s"])
    log.info("recovered from %s in %s s", entry["fault"], entry["recovery_s"])
    chaos.check_alive()


async def _in_sync(bootstrap: str, timeout: float = 90) -> None:
    """Every partition's replicas all in sync again: a second loss before that could leave a
    partition one replica, below min.insync.replicas, and stall it (not lose it)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=5000)
    await admin.start()
    try:
        deadline = time.monotonic() + timeout
        while True:
            lagging = [f"{t['topic']}:{p['partition']}" for t in await admin.describe_topics()
                       for p in t["partitions"] if set(p["isr"]) != set(p["replicas"])]
            if not lagging:
                return
            if time.monotonic() > deadline:
                raise AssertionError(f"replicas out of sync after {timeout}s: {lagging[:10]}")
            await asyncio.sleep(0.5)
    finally:
        await admin.close()


async def _finish(bootstrap: str, pg_dsn: str, plan: Any, side: Side, chaos: Chaos,
                  report: dict[str, Any]) -> None:
    """Stop the workers (each must exit 0) and judge every output."""
    for wid, proc in list(side.fleet.current.items()):
        chaos.exits[wid] = await side.fleet.terminate(proc)
    part = partial(partition_of, partitions=PARTITIONS)
    report.update(judge(plan, await read_kafka(bootstrap, side.ns, (EXPORT,)),
                        await read_pg(pg_dsn, side.table), part))
    report["open_transactions"] = await open_transactions(bootstrap, side.ns, (EXPORT,))
