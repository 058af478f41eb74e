"""The worker of ``python -m bench soak`` as a process of its own: started with
``python -m streamflow worker``, measured from /proc (RSS, user+system CPU), scraped on its
HTTP port (/readyz, /metrics) and stopped with SIGTERM.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import psutil

from ._met import log_errors

REPO = Path(__file__).resolve().parent.parent
TARGET = "bench._soak_pipeline:pipeline"
LEDGER_GAUGE = "streamflow_ledger_entries_loaded"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _get(url: str, timeout: float = 2.0) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return int(r.status), bytes(r.read())
    except urllib.error.HTTPError as e:
        return int(e.code), b""
    except (OSError, ValueError):
        return 0, b""


def broker_pid() -> int | None:
    """The local Kafka broker's process id, to tell whether it was restarted meanwhile."""
    for proc in psutil.process_iter(["pid", "cmdline"]):
        cmd = proc.info.get("cmdline") or []
        if "kafka.Kafka" in cmd:
            return int(proc.info["pid"])
    return None


@dataclass
class WorkerProc:
    """One worker process; ``env`` has its ``STREAMFLOW_*`` and ``BENCH_SOAK_*`` settings."""

    bootstrap: str
    ns: str
    partitions: int
    exactly_once: bool
    env: dict[str, str]
    log: Path
    port: int = 0
    proc: subprocess.Popen[bytes] | None = None
    ps: psutil.Process | None = None
    starts: int = 0

    def spawn(self) -> None:
        self.port = free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "STREAMFLOW_"))}
        env.update(self.env, STREAMFLOW_NAMESPACE=self.ns, PYTHONPATH=str(REPO))
        verbose = ["-v"] if os.environ.get("BENCH_SOAK_VERBOSE") else []
        cmd = [sys.executable, "-m", "streamflow", *verbose, "--log-format", "text", "worker",
               TARGET, "--kafka", self.bootstrap, "--state-dir", f"/tmp/{self.ns}",
               "--partitions", str(self.partitions), "--http-port", str(self.port)]
        if self.exactly_once:
            cmd.append("--exactly-once")
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with self.log.open("ab") as fh:
            fh.write(f"--- start {self.starts + 1}: {' '.join(cmd)}\n".encode())
            fh.flush()
            self.proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=fh,
                                         stderr=subprocess.STDOUT)
        self.ps = psutil.Process(self.proc.pid)
        self.starts += 1

    async def ready(self, timeout: float = 120.0) -> float | None:
        """Seconds until /readyz answers 200 (None: it did not within ``timeout``, or the
        process exited)."""
        t0 = time.perf_counter()
        url = f"http://127.0.0.1:{self.port}/readyz"
        while time.perf_counter() - t0 < timeout:
            if self.proc is None or self.proc.poll() is not None:
                return None
            status, _ = await asyncio.to_thread(_get, url, 1.0)
            if status == 200:
                return time.perf_counter() - t0
            await asyncio.sleep(0.05)
        return None

    async def stop(self, timeout: float = 90.0) -> float | None:
        """SIGTERM; seconds until the process exited (None: killed after ``timeout``)."""
        if self.proc is None:
            return 0.0
        t0 = time.perf_counter()
        self.proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.to_thread(self.proc.wait, timeout)
            return time.perf_counter() - t0
        except subprocess.TimeoutExpired:
            self.proc.kill()
            await asyncio.to_thread(self.proc.wait, 10)
            return None
        finally:
            self.ps = None

    async def restart(self) -> dict[str, float | None]:
        """SIGTERM, start again, and the time from the signal until /readyz answers 200."""
        t0 = time.perf_counter()
        stop_s = await self.stop()
        self.spawn()
        start_s = await self.ready(600.0)  # a start that reads a long ledger can be slow
        total = None if start_s is None else time.perf_counter() - t0
        return {"stop_s": _r(stop_s), "start_s": _r(start_s), "restart_s": _r(total)}

    def rss_mb(self) -> float | None:
        try:
            return None if self.ps is None else self.ps.memory_info().rss / 1e6
        except psutil.Error:
            return None

    def cpu_s(self) -> float | None:
        try:
            if self.ps is None:
                return None
            t = self.ps.cpu_times()
            return float(t.user + t.system)
        except psutil.Error:
            return None

    async def metrics(self) -> dict[str, float]:
        """The unlabelled sums of every sample in /metrics, by metric name."""
        status, body = await asyncio.to_thread(
            _get, f"http://127.0.0.1:{self.port}/metrics", 10.0)
        out: dict[str, float] = {}
        if status != 200:
            return out
        for line in body.decode(errors="replace").splitlines():
            if not line or line.startswith("#"):
                continue
            name, _, value = line.rpartition(" ")
            try:
                out[name.split("{")[0]] = out.get(name.split("{")[0], 0.0) + float(value)
            except ValueError:
                continue
        return out

    def errors(self) -> list[str]:
        """The ERROR lines of every start's log, but aiokafka's "Topic ... not found in
        cluster metadata": logged at ERROR while the worker's first start creates its topics."""
        return [e for e in log_errors(self.log) if "not found in cluster metadata" not in e]

    async def ledger_gauge(self) -> float | None:
        """``streamflow_ledger_entries_loaded`` if this StreamFlow has it, else None."""
        return (await self.metrics()).get(LEDGER_GAUGE)


def _r(v: float | None) -> float | None:
    return None if v is None else round(v, 3)
