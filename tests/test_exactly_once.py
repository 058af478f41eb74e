"""Exactly once: a crash between produce and commit, a fenced zombie, scale-out and SIGTERM.

Worker processes run ``tests/pipelines/settle.py`` (files → price → settle ⟵ payments →
files) through the real CLI; the chaos suite (tests/chaos/) does the same at volume.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import httpx
import orjson
import pytest
from aiokafka import AIOKafkaProducer
from pydantic import BaseModel

from streamflow import Asset, Pipeline, Settings, Worker
from streamflow.errors import TransactionFailed
from streamflow.model import Message, OutMessage
from streamflow.transports import KafkaTransport, TransactionalSubscription
from streamflow.transports.kafka._eos import KafkaEosSubscription

from . import faults
from .helpers import memory_source, read_topic

ROOT = Path(__file__).resolve().parent.parent
TARGET = str(ROOT / "tests" / "pipelines" / "settle.py") + ":pipeline"
ORDERS = 120


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _land(workdir: Path, ids: range, part: int) -> None:
    """One JSON Lines file of orders and one of payments, written then renamed into place."""
    for asset, field, factor in (("orders", "amount", 1.0), ("payments", "paid", 1.2)):
        folder = workdir / asset
        folder.mkdir(parents=True, exist_ok=True)
        lines = b"".join(orjson.dumps({"order_id": f"o{i:04d}", field: i * factor}) + b"\n"
                         for i in ids)
        tmp = folder / f".part-{part}.tmp"
        tmp.write_bytes(lines)
        tmp.rename(folder / f"part-{part}.jsonl")


class Workers:
    """``streamflow worker`` processes of one namespace; killed at the end whatever happens."""

    def __init__(self, settings: Settings, workdir: Path) -> None:
        self.settings, self.workdir = settings, workdir
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self, *extra: str, env: dict[str, str] | None = None,
              port: int | None = None) -> subprocess.Popen[bytes]:
        s = self.settings
        args = ["worker", TARGET, "--exactly-once",
                "--state-dir", str(s.state_dir), "--partitions", str(s.partitions),
                "--http-port", str(port) if port is not None else "off", *extra]
        cmd = faults.command(args, env or {})  # the test-only entry point if a fault is asked
        if s.kafka_bootstrap:
            cmd += ["--kafka", s.kafka_bootstrap]
        full_env = faults.subprocess_env({**os.environ, "SETTLE_WORKDIR": str(self.workdir),
                    "STREAMFLOW_NAMESPACE": s.namespace, "STREAMFLOW_DRAIN_TIMEOUT_S": "20",
                    **(env or {})})
        full_env.pop("STREAMFLOW_KAFKA_BOOTSTRAP", None)
        log = open(self.workdir / f"worker-{len(self.procs)}.log", "wb")  # noqa: SIM115
        proc = subprocess.Popen(cmd, env=full_env, stdout=log, stderr=subprocess.STDOUT)
        self.procs.append(proc)
        return proc

    def log(self, i: int) -> str:
        return (self.workdir / f"worker-{i}.log").read_text(errors="replace")

    def kill_all(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.kill()
                p.wait()


@pytest.fixture
def workers(settings: Settings, tmp_path: Path) -> Iterator[Workers]:
    w = Workers(settings, tmp_path / "work")
    w.workdir.mkdir()
    yield w
    w.kill_all()


async def _outputs(settings: Settings, asset: str) -> Counter[str]:
    msgs = await read_topic(settings, f"{settings.namespace}.{asset}")
    return Counter(orjson.loads(m.value)["order_id"] for m in msgs)


async def _wait_settled(settings: Settings, n: int, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if sum((await _outputs(settings, "settled")).values()) >= n:
            return
        await asyncio.sleep(0.5)
    raise AssertionError(f"fewer than {n} settled orders after {timeout}s")


def _stop(proc: subprocess.Popen[bytes], timeout: float = 40) -> int:
    proc.send_signal(signal.SIGTERM)
    return proc.wait(timeout)


def _exactly_once(counts: Counter[str], n: int) -> None:
    expected = {f"o{i:04d}" for i in range(n)}
    assert set(counts) == expected, (sorted(expected - set(counts))[:5],
                                     sorted(set(counts) - expected)[:5])
    dup = {k: c for k, c in counts.items() if c > 1}
    assert not dup, f"duplicated outputs: {dict(list(dup.items())[:5])}"


async def test_a_crash_between_produce_and_commit_loses_and_duplicates_nothing(
        settings: Settings, workers: Workers) -> None:
    for part in range(4):
        _land(workers.workdir, range(part * ORDERS // 4, (part + 1) * ORDERS // 4), part)
    first = workers.start(env={faults.CRASH_BEFORE_COMMIT: "3"})
    assert first.wait(120) == -signal.SIGKILL, workers.log(0)
    # What the dead worker produced in its open transaction is not readable.
    for asset in ("priced", "settled"):
        assert not [k for k, c in (await _outputs(settings, asset)).items() if c > 1]
    again = workers.start()
    await _wait_settled(settings, ORDERS)
    assert _stop(again) == 0, workers.log(1)
    _exactly_once(await _outputs(settings, "priced"), ORDERS)
    _exactly_once(await _outputs(settings, "settled"), ORDERS)
    assert not await read_topic(settings, settings.dead_letter_topic)


async def test_sigterm_finishes_in_flight_work_and_exits_zero(
        settings: Settings, workers: Workers) -> None:
    port = _free_port()
    proc = workers.start(port=port)
    base = f"http://127.0.0.1:{port}"
    async with httpx.AsyncClient(base_url=base, timeout=2) as http:
        deadline = time.monotonic() + 60
        while True:
            try:
                if (await http.get("/readyz")).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline and proc.poll() is None, workers.log(0)
            await asyncio.sleep(0.2)
        assert (await http.get("/healthz")).json()["status"] == "ok"
        status = (await http.get("/status")).json()
        assert status["exactly_once"] is True
        price_group = f"{settings.namespace}.stage.price"
        assert status["assignments"][price_group] == list(range(settings.partitions)
                                                          if settings.kafka_bootstrap else [0])
    _land(workers.workdir, range(ORDERS), 0)
    await _wait_settled(settings, ORDERS)
    started = time.monotonic()
    assert _stop(proc) == 0, workers.log(0)
    assert time.monotonic() - started < 30
    assert "done on the" in workers.log(0)
    _exactly_once(await _outputs(settings, "settled"), ORDERS)


@pytest.mark.kafka
async def test_workers_share_partitions_and_hand_them_over(
        kafka_bootstrap: str, tmp_path: Path, namespace: str) -> None:
    settings = Settings(kafka_bootstrap=kafka_bootstrap, state_dir=tmp_path / "state",
                        namespace=namespace, partitions=4)
    w = Workers(settings, tmp_path / "work")
    w.workdir.mkdir()
    ports = [_free_port(), _free_port()]
    try:
        a = w.start("--worker-id", "a", port=ports[0])
        w.start("--worker-id", "b", "--no-sources", port=ports[1])
        group = f"{namespace}.stage.settle"
        owned: list[list[int]] = []
        deadline = time.monotonic() + 90
        async with httpx.AsyncClient(timeout=2) as http:
            while time.monotonic() < deadline:
                try:
                    owned = [(await http.get(f"http://127.0.0.1:{p}/status")).json()
                             ["assignments"].get(group, []) for p in ports]
                except httpx.TransportError:
                    owned = []
                flat = sorted(p for ps in owned for p in ps)
                if len(owned) == 2 and all(owned) and flat == [0, 1, 2, 3]:
                    break
                await asyncio.sleep(0.3)
        assert sorted(p for ps in owned for p in ps) == [0, 1, 2, 3], (owned, w.log(0))
        _land(w.workdir, range(ORDERS // 2), 0)
        await _wait_settled(settings, ORDERS // 2)
        # Worker b leaves mid-stream: a takes its partitions, state and fired runs over.
        assert _stop(w.procs[1]) == 0, w.log(1)
        _land(w.workdir, range(ORDERS // 2, ORDERS), 1)
        await _wait_settled(settings, ORDERS)
        assert _stop(a) == 0, w.log(0)
    finally:
        w.kill_all()
    _exactly_once(await _outputs(settings, "priced"), ORDERS)
    _exactly_once(await _outputs(settings, "settled"), ORDERS)


async def _handle_once(sub: TransactionalSubscription,
                       work: Callable[[], Awaitable[None]]) -> None:
    """Poll all three inputs once the partition is ours; do ``work`` in its transaction."""
    got: list[Message] = []
    while len(got) < 3:
        msgs = await sub.poll(10, timeout=1)
        async with sub.partition(0) as owned:
            if owned:  # records polled before the assignment settled are dropped
                got += msgs
    async with sub.partition(0) as owned:
        assert owned
        await work()
        sub.mark_done(got)


@pytest.mark.kafka
async def test_a_zombie_is_fenced_by_the_next_owner_of_its_partition(
        kafka_bootstrap: str, namespace: str) -> None:
    t = KafkaTransport(kafka_bootstrap, partitions=1, exactly_once=True)
    await t.start()
    inp, out, group = f"{namespace}.in", f"{namespace}.out", f"{namespace}.g"
    try:
        await t.ensure_topics([inp, out])
        await t.publish([OutMessage(inp, b"%d" % i) for i in range(3)])
        zombie = await t.subscribe(group, [inp])
        assert isinstance(zombie, KafkaEosSubscription)
        await _handle_once(zombie, lambda: t.publish([OutMessage(out, b"from the zombie")]))
        # The next owner initialises the partition's transactional id: the fence.
        fence = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap,
                                 transactional_id=f"{group}.0")
        await fence.start()
        await fence.begin_transaction()
        await fence.abort_transaction()
        await fence.stop()
        with pytest.raises(TransactionFailed, match=f"{group} partition 0"):
            await zombie.flush()
        await zombie.close()
        assert await t.read_topic(out) == []
        # Nothing was committed: the next member reads the inputs again, and commits.
        heir = await t.subscribe(group, [inp])
        assert isinstance(heir, KafkaEosSubscription)
        await _handle_once(heir, lambda: t.publish([OutMessage(out, b"from the heir")]))
        await heir.flush()
        assert [m.value for m in await t.read_topic(out)] == [b"from the heir"]
        assert await heir.lag() == 0
        await heir.close()
    finally:
        await t.close()


class Doc(BaseModel):
    id: int
    body: str


async def test_an_oversized_record_is_dead_lettered_without_blocking_its_partition(
        settings: Settings) -> None:
    docs, kept = Asset("docs", Doc, key="id"), Asset("kept", Doc, key="id")
    p = Pipeline("big")
    p.source(memory_source([[{"id": 1, "body": "a"}, {"id": 2, "body": "x" * 5000},
                             {"id": 3, "body": "c"}]]), asset=docs, name="docs")

    @p.stage(inputs=[docs], output=kept)
    def keep(d: Doc) -> Doc:
        return d

    s = settings.model_copy(update={"max_record_bytes": 2048, "exactly_once": True})
    summary = await Worker(p, s).run()
    assert summary.dead_lettered == 1
    kept_ids = [orjson.loads(m.value)["id"] for m in await read_topic(s, f"{s.namespace}.kept")]
    assert sorted(kept_ids) == [1, 3]
    [dead] = await read_topic(s, s.dead_letter_topic)
    reason = orjson.loads(dead.value)["reason"]
    assert "exceeds max_record_bytes (2048)" in reason and "STREAMFLOW_MAX_RECORD_BYTES" in reason
    assert len(orjson.loads(dead.value)["payload"]) > 5000  # the record itself is kept
