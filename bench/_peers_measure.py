"""Parent side of one peers run: spawn the system, watch its output, stop it, verify.

Throughput: the inputs are seeded before the system starts; the output topic is created with
``message.timestamp.type=LogAppendTime``, so every output carries the broker's append time
whatever the system's client stamps. Records per second are taken from those stamps, from the
output at 2% of the run to the last one (start-up and group joins excluded), and count input
records (two per output for the join). CPU is the child's user+system time over the same
stretch (sampled from /proc as the output offsets pass 2% and stop moving), per million input
records; memory is its peak RSS (VmHWM). Every output is read back under read_committed and
counted, with distinct keys, so lost or duplicated records show; the child's log is scanned
for ERROR lines. What makes a run not count: ``bench/_met.py``.
"""

from __future__ import annotations

import asyncio
import math
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
from aiokafka import AIOKafkaConsumer, TopicPartition

from ._kafka import client_options
from ._met import log_errors
from ._peers_common import Spec, create_topics, seed
from ._readback import read_back

REPO = Path(__file__).resolve().parent.parent
FIRST_OUTPUT_TIMEOUT_S = 120.0
STALL_S = 30.0


@dataclass
class Child:
    spec: Spec
    proc: subprocess.Popen[bytes]
    ps: psutil.Process
    log: Path
    profiler: subprocess.Popen[bytes] | None = None
    notes: list[str] = field(default_factory=list)

    def cpu_s(self) -> float:
        try:
            t = self.ps.cpu_times()
            return float(t.user + t.system)
        except psutil.Error:
            return math.nan

    def peak_rss_mb(self) -> float | None:
        try:
            for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    return round(int(line.split()[1]) / 1024, 1)
        except OSError:
            return None
        return None

    def report(self) -> dict[str, Any]:
        """After ``stop``: its ERROR lines (from its log) and its exit status."""
        errors = log_errors(self.log)
        return {"errors": len(errors), "error_lines": errors[:3], "log": str(self.log),
                "exit_status": self.proc.returncode}

    def alive(self) -> bool:
        return self.proc.poll() is None

    def profile(self, out: Path) -> None:
        """Sample the child with py-spy (collapsed stacks) until ``stop``."""
        out.parent.mkdir(parents=True, exist_ok=True)
        self.profiler = subprocess.Popen(
            ["py-spy", "record", "--pid", str(self.proc.pid), "--rate", "200", "--format",
             "raw", "--nonblocking", "-o", str(out)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    async def stop(self) -> None:
        if self.profiler is not None:
            self.profiler.send_signal(signal.SIGINT)
            await asyncio.to_thread(_wait, self.profiler, 30)
        if self.alive():
            self.proc.send_signal(signal.SIGTERM)
            if not await asyncio.to_thread(_wait, self.proc, 45):
                self.notes.append("did not stop within 45 s of SIGTERM; killed")
                self.proc.kill()
                await asyncio.to_thread(_wait, self.proc, 10)
        elif self.proc.returncode:
            self.notes.append(f"exited early with status {self.proc.returncode} "
                              f"(log: {self.log})")


def _wait(p: subprocess.Popen[bytes], timeout: float) -> bool:
    try:
        p.wait(timeout)
        return True
    except subprocess.TimeoutExpired:
        return False


def spawn(spec: Spec, logdir: Path) -> Child:
    logdir.mkdir(parents=True, exist_ok=True)
    log = logdir / f"{spec.ns}-{spec.system}-{spec.settings}-{spec.workload}.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "STREAMFLOW_"))}
    env.update(spec.env)
    with log.open("wb") as fh:
        proc = subprocess.Popen([sys.executable, "-m", "bench._peers_child", spec.to_json()],
                                cwd=REPO, env=env, stdout=fh, stderr=subprocess.STDOUT)
    return Child(spec, proc, psutil.Process(proc.pid), log)


async def _end_total(consumer: AIOKafkaConsumer, tps: list[TopicPartition]) -> int:
    return int(sum((await consumer.end_offsets(tps)).values()))


def rate_from_stamps(stamps: list[int], per_output: int) -> float | None:
    if len(stamps) < 100:
        return None
    low = math.ceil(0.02 * len(stamps))
    span_s = (stamps[-1] - stamps[low]) / 1000
    return (len(stamps) - 1 - low) * per_output / span_s if span_s > 0 else None


async def throughput_run(spec: Spec, n: int, logdir: Path, profile_to: Path | None = None,
                         cap_s: float | None = None) -> dict[str, Any]:
    """Seed ``n`` input records, run the system over them, and measure it. ``cap_s``: stop a
    slow system that long after its output passed 2%, and measure what it did until then."""
    await create_topics(spec.bootstrap, [spec.topic(t) for t in spec.inputs])
    await create_topics(spec.bootstrap, [spec.topic(spec.output)], log_append_time=True)
    await seed(spec, n)
    child = spawn(spec, logdir)
    consumer = AIOKafkaConsumer(**client_options(spec.bootstrap),
                                isolation_level="read_committed")
    await consumer.start()
    tps = [TopicPartition(spec.topic(spec.output), p) for p in range(spec.partitions)]
    t0 = time.monotonic()
    low: tuple[int, float] | None = None
    capped = False
    t_low = t0
    last: tuple[int, float, float] = (0, t0, math.nan)  # total, when it last moved, cpu then
    try:
        while child.alive():
            total, now = await _end_total(consumer, tps), time.monotonic()
            if total != last[0]:
                last = (total, now, child.cpu_s())
            if low is None and total >= 0.02 * spec.expect:
                low, t_low = (total, child.cpu_s()), now
                if profile_to is not None:
                    child.profile(profile_to)
            if total >= spec.expect and now - last[1] >= 1.0:
                break  # all there (transaction markers count too: wait until it settles)
            if cap_s is not None and low is not None and now - t_low > cap_s \
                    and total < spec.expect:
                capped = True
                child.notes.append(f"capped {cap_s:.0f} s after 2% of the output, at "
                                   f"{total:,} of {spec.expect:,} outputs")
                break
            if total == 0 and now - t0 > FIRST_OUTPUT_TIMEOUT_S:
                child.notes.append(f"no output within {FIRST_OUTPUT_TIMEOUT_S:.0f} s")
                break
            if total and now - last[1] > STALL_S:
                child.notes.append(f"output stalled at {total} of {spec.expect} for "
                                   f"{STALL_S:.0f} s")
                break
            await asyncio.sleep(0.05)
    finally:
        await consumer.stop()
        rss = child.peak_rss_mb()
        await child.stop()
    count, distinct, stamps = await read_back(spec.bootstrap, tps[0].topic, spec.partitions)
    per_output = 2 if spec.workload == "join" else 1
    cpu = None
    if low is not None and last[0] > low[0]:
        cpu = (last[2] - low[1]) / ((last[0] - low[0]) * per_output) * 1e6
    notes = list(child.notes)  # loss and duplicates: the row's problems (_met.run_problems)
    return {"records_per_s": rate_from_stamps(stamps, per_output), "rss_mb": rss,
            "cpu_s_per_million": cpu, "outputs": count, "distinct": distinct,
            "expected": spec.expect, "capped": capped, **child.report(),
            "note": "; ".join(notes) or None}

