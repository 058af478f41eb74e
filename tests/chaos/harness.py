"""Worker processes, their status, commit watching and faults for the chaos suite.

Workers are real ``streamflow worker`` processes (``-v``, logs in the test's tmp dir). Faults
are SIGKILLs of a worker (or of the broker), the worker's own crash-before-commit hook, and a
worker that joins and leaves. Recovery is measured from the outside: committed offsets of the
pipeline's consumer groups are polled every 100 ms, and a kill's recovery time is the time to
the first commit on a partition the killed worker owned, per its ``/status`` shortly before.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import sqlite3
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from tests import faults

ROOT = Path(__file__).resolve().parents[2]
TARGET = str(Path(__file__).resolve().parent / "pipeline.py") + ":pipeline"
log = logging.getLogger("chaos")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Proc:
    """One ``streamflow worker`` process (one incarnation of a worker id)."""

    worker_id: str
    port: int
    popen: subprocess.Popen[bytes]
    log_path: Path
    started: float
    assignments: dict[str, list[int]] = field(default_factory=dict)
    assigned_at: float = 0.0
    ready: bool = False

    @property
    def alive(self) -> bool:
        return self.popen.poll() is None

    def tail(self, lines: int = 40) -> str:
        text = self.log_path.read_text(errors="replace").splitlines()
        return "\n".join(text[-lines:])


class Fleet:
    """The worker processes of one namespace; every one is killed at the end, whatever."""

    def __init__(self, workdir: Path, env: dict[str, str], kafka: str | None,
                 exactly_once: bool = True) -> None:
        self.workdir, self.env, self.kafka = workdir, env, kafka
        self.exactly_once = exactly_once
        self.procs: list[Proc] = []
        self.current: dict[str, Proc] = {}
        self._pollers: list[asyncio.Task[None]] = []

    def start(self, worker_id: str, extra_env: dict[str, str] | None = None) -> Proc:
        port = free_port()
        args = ["-v", "--log-format", "text", "worker", TARGET,
                *(["--exactly-once"] if self.exactly_once else []),
                "--worker-id", worker_id, "--http-port", str(port),
                "--state-dir", str(self.workdir / "state")]
        cmd = faults.command(args, extra_env or {})  # test-only entry point if a fault is asked
        if self.kafka:
            cmd += ["--kafka", self.kafka]
        env = faults.subprocess_env({**os.environ, **self.env, **(extra_env or {})})
        if not self.kafka:
            env.pop("STREAMFLOW_KAFKA_BOOTSTRAP", None)
        n = sum(1 for p in self.procs if p.worker_id == worker_id)
        path = self.workdir / f"{worker_id}-{n}.log"
        with open(path, "wb") as out:
            popen = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT,
                                     cwd=ROOT)
        proc = Proc(worker_id, port, popen, path, time.time())
        self.procs.append(proc)
        self.current[worker_id] = proc
        self._pollers.append(asyncio.create_task(self._poll_status(proc)))
        log.info("started %s (pid %d, port %d)%s", worker_id, popen.pid, port,
                 f" with {extra_env}" if extra_env else "")
        return proc

    async def _poll_status(self, proc: Proc) -> None:
        """Keep the last non-empty assignment: the ownership a kill is measured against."""
        # /status reads every consumer's lag from the broker: about a second per answer.
        async with httpx.AsyncClient(timeout=8.0) as http:
            while proc.alive:
                try:
                    st = (await http.get(f"http://127.0.0.1:{proc.port}/status")).json()
                    proc.ready = bool(st.get("ready"))
                    owned = {g: ps for g, ps in st.get("assignments", {}).items() if ps}
                    if owned:
                        proc.assignments, proc.assigned_at = owned, time.time()
                except (httpx.HTTPError, ValueError):
                    pass
                await asyncio.sleep(0.1)

    async def wait_ready(self, proc: Proc, timeout: float = 90) -> None:
        deadline = time.monotonic() + timeout
        while not (proc.ready and proc.assignments):
            if not proc.alive:
                raise AssertionError(f"{proc.worker_id} died while starting:\n{proc.tail()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"{proc.worker_id} not ready after {timeout}s:\n"
                                     f"{proc.tail()}")
            await asyncio.sleep(0.2)

    async def fresh_assignments(self, proc: Proc, max_age: float = 2.5) -> dict[str, list[int]]:
        """Ownership polled within ``max_age`` seconds (waits a moment for a fresh poll)."""
        deadline = time.monotonic() + 8
        while time.monotonic() < deadline:
            if time.time() - proc.assigned_at <= max_age:
                break
            await asyncio.sleep(0.05)
        return dict(proc.assignments)

    async def kill(self, proc: Proc) -> float:
        """SIGKILL; returns the kill time once the process is gone."""
        at = time.time()
        proc.popen.send_signal(signal.SIGKILL)
        await asyncio.to_thread(proc.popen.wait)
        log.info("killed %s (pid %d)", proc.worker_id, proc.popen.pid)
        return at

    async def wait_exit(self, proc: Proc, timeout: float) -> tuple[int, float]:
        """Wait for the process to end by itself: its exit code and when it was seen ending."""
        rc = await asyncio.wait_for(asyncio.to_thread(proc.popen.wait), timeout)
        return rc, time.time()

    async def terminate(self, proc: Proc, timeout: float = 45) -> int:
        proc.popen.send_signal(signal.SIGTERM)
        rc, _ = await self.wait_exit(proc, timeout)
        log.info("%s exited with %d after SIGTERM", proc.worker_id, rc)
        return rc

    def check_alive(self) -> None:
        """Every current worker that should be running is running."""
        for wid, p in self.current.items():
            if not p.alive:
                raise AssertionError(f"worker {wid} exited with {p.popen.returncode}:\n"
                                     f"{p.tail()}")

    async def close(self) -> None:
        for p in self.procs:
            if p.alive:
                p.popen.kill()
                await asyncio.to_thread(p.popen.wait)
        for t in self._pollers:
            t.cancel()
        await asyncio.gather(*self._pollers, return_exceptions=True)


# ------------------------------------------------------------------------------ commit watching

Commit = tuple[float, str, str, int, int]  # when seen, group, topic, partition, offset


class CommitWatch:
    """Committed offsets of the pipeline's groups, polled every ~100 ms; each advance is an
    event. Kafka: the admin API; embedded: the SQLite ``group_offsets`` table, read-only."""

    def __init__(self, groups: list[str], kafka: str | None = None,
                 db: Path | None = None) -> None:
        self.groups, self.kafka, self.db = groups, kafka, db
        self.offsets: dict[tuple[str, str, int], int] = {}
        self.events: list[Commit] = []
        self.errors = 0
        self.cycle: tuple[float, dict[tuple[str, str, int], int]] = (0.0, {})
        """The start of the last complete poll of every group, and what it read."""
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def _see(self, now: float, group: str, topic: str, partition: int, off: int) -> None:
        key = (group, topic, partition)
        if off > self.offsets.get(key, -1):
            if key in self.offsets:  # the first reading is a baseline, not a commit
                self.events.append((now, group, topic, partition, off))
            self.offsets[key] = off

    async def _run(self) -> None:
        if self.kafka is not None:
            await self._run_kafka(self.kafka)
        else:
            await self._run_sqlite()

    async def _run_kafka(self, bootstrap: str) -> None:
        from aiokafka.admin import AIOKafkaAdminClient

        while True:
            admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=3000)
            try:
                await admin.start()
                while True:
                    began = time.time()
                    for g in self.groups:
                        got = await admin.list_consumer_group_offsets(g)
                        now = time.time()
                        for tp, meta in got.items():
                            self._see(now, g, tp.topic, tp.partition, meta.offset)
                    self.cycle = (began, dict(self.offsets))
                    await asyncio.sleep(0.1)
            except asyncio.CancelledError:
                raise
            except Exception:  # the broker is down or restarting: keep trying
                self.errors += 1
                await asyncio.sleep(0.3)
            finally:
                with contextlib.suppress(Exception):
                    await admin.close()

    async def _run_sqlite(self) -> None:
        assert self.db is not None
        while True:
            if self.db.exists():
                break
            await asyncio.sleep(0.1)
        uri = f"file:{self.db}?mode=ro"
        while True:
            try:
                began = time.time()
                con = sqlite3.connect(uri, uri=True, timeout=1)
                try:
                    rows = con.execute("SELECT grp, topic, off FROM group_offsets").fetchall()
                finally:
                    con.close()
                now = time.time()
                for g, topic, off in rows:
                    if g in self.groups:
                        self._see(now, g, topic, 0, int(off))
                self.cycle = (began, dict(self.offsets))
            except sqlite3.Error:
                self.errors += 1
            await asyncio.sleep(0.1)

    async def baseline(self, after: float, timeout: float = 10) -> dict[tuple[str, str, int], int]:
        """Offsets read by a poll that began after ``after`` (a death): whatever the dead
        process committed has landed by then, so a later advance is someone else's commit."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            began, offsets = self.cycle
            if began > after:
                return offsets
            await asyncio.sleep(0.02)
        return dict(self.offsets)  # the broker is unreachable: what was last seen

    def first_after(self, at: float, owned: dict[str, list[int]],
                    base: dict[tuple[str, str, int], int]) -> float | None:
        """Seconds from ``at`` to the first commit past ``base`` on a (group, partition) in
        ``owned``."""
        for when, g, t, p, off in self.events:
            if when > at and p in owned.get(g, ()) and off > base.get((g, t, p), -1):
                return when - at
        return None

    async def recovery(self, at: float, owned: dict[str, list[int]],
                       timeout: float = 60) -> float | None:
        base = await self.baseline(at)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            r = self.first_after(at, owned, base)
            if r is not None:
                return round(r, 3)
            await asyncio.sleep(0.1)
        return None


# ---------------------------------------------------------------------------------- the broker

def broker_pid() -> int | None:
    from streamflow.devservices import kafka

    return kafka._pid()


async def kill_broker() -> float:
    """SIGKILL the broker's JVM; returns when it is gone."""
    pid = broker_pid()
    assert pid is not None, "the broker is not running (or not ours)"
    at = time.time()
    os.kill(pid, signal.SIGKILL)
    while True:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            break
        await asyncio.sleep(0.05)
    log.info("killed the broker (pid %d)", pid)
    return at


async def restart_broker() -> float:
    """Start it again (blocking in a thread); returns when it accepts clients."""
    from streamflow import devservices as services

    await asyncio.to_thread(services.up, ["kafka"])
    log.info("broker restarted")
    return time.time()


def fraction(done: float, total: float) -> float:
    return round(done / total, 3) if total else 1.0


def jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [jsonable(v) for v in obj]
    return obj


# ------------------------------------------------------------------------------------ progress

async def kafka_lag(bootstrap: str, inputs: dict[str, list[str]]) -> int:
    """Records on each group's input topics past its committed offsets (high watermarks, so
    transaction markers count until a group commits past them)."""
    from aiokafka import AIOKafkaConsumer, TopicPartition
    from aiokafka.admin import AIOKafkaAdminClient

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=5000)
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap)
    await admin.start()
    await consumer.start()
    try:
        await consumer._client.force_metadata_update()
        lag = 0
        for group, topics in inputs.items():
            committed = await admin.list_consumer_group_offsets(group)
            tps = [TopicPartition(t, p) for t in topics
                   for p in (consumer.partitions_for_topic(t) or ())]
            if not tps:
                return 1 << 30
            for tp, end in (await consumer.end_offsets(tps)).items():
                meta = committed.get(tp)
                lag += max(0, end - (meta.offset if meta is not None else 0))
        return lag
    finally:
        await consumer.stop()
        await admin.close()


def sqlite_lag(db: Path, inputs: dict[str, list[str]]) -> int:
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=2)
    try:
        ends = dict(con.execute("SELECT topic, MAX(off) + 1 FROM log GROUP BY topic").fetchall())
        done = {(g, t): o for g, t, o in con.execute("SELECT grp, topic, off FROM group_offsets")}
    finally:
        con.close()
    return sum(max(0, ends.get(t, 0) - done.get((g, t), 0))
               for g, topics in inputs.items() for t in topics)
