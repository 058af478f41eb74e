"""Shared plumbing: the status type, errors, port ownership, detached processes, pid files.

Services are plain OS processes (no Docker), so "is it ours and healthy?" is answered from pid
files, the process command line and a readiness probe, and a taken port is reported with the
holder's pid and command line so the user can decide what to stop.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

from streamflow.errors import ServiceError
from streamflow.observability import describe_process, port_holder

from ._config import HOST


@dataclass(frozen=True)
class ServiceStatus:
    """What ``services status`` reports for one service."""

    name: str
    running: bool
    pid: int | None
    ports: tuple[int, ...]
    version: str | None
    log: str | None
    endpoints: Mapping[str, str] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """JSON-ready dict: running, pid, ports, version, log plus url/bootstrap endpoints."""
        out: dict[str, Any] = {
            "running": self.running,
            "pid": self.pid,
            "ports": list(self.ports),
        }
        out.update(self.endpoints)
        out["version"] = self.version
        out["log"] = self.log
        return out


def progress(message: str) -> None:
    """Human progress goes to stderr so stdout stays machine-readable."""
    print(message, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- ports


def port_in_use(port: int, host: str = HOST) -> bool:
    """True if we cannot bind ``host:port`` (someone listens there or on the wildcard)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            if exc.errno in (errno.EADDRINUSE, errno.EACCES):
                return True
            raise
    return False


def check_port_free(port: int, service: str, hint: str = "") -> None:
    """Raise :class:`ServiceError` naming the port and its holder if ``port`` is taken."""
    if not port_in_use(port):
        return
    holder = port_holder(port)
    who = describe_process(holder) if holder else "an unknown process (not visible to us)"
    msg = f"{service}: port {HOST}:{port} is already in use by {who}."
    if hint:
        msg += f" {hint}"
    else:
        msg += " Stop that process or free the port, then run `streamflow services up` again."
    raise ServiceError(msg)


def tcp_connectable(port: int, host: str = HOST, timeout: float = 0.5) -> bool:
    """Cheap liveness probe: does something accept TCP connections on ``host:port``?"""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


# --------------------------------------------------------------------------- processes

_CHILDREN: dict[int, subprocess.Popen[bytes]] = {}
"""Popen handles we launched, kept so a child that dies while we live is reaped (no zombie)."""


def spawn_detached(
    cmd: Sequence[str], log: Path, cwd: Path, env: Mapping[str, str] | None = None
) -> int:
    """Start ``cmd`` in its own session so it outlives this CLI/test process; return its pid."""
    with log.open("wb") as out:
        proc = subprocess.Popen(
            list(cmd),
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env=dict(env) if env is not None else None,
        )
    _CHILDREN[proc.pid] = proc
    return proc.pid


def alive(pid: int | None) -> bool:
    """True if ``pid`` is a live (non-zombie) process."""
    if pid is None:
        return False
    child = _CHILDREN.get(pid)
    if child is not None and child.poll() is not None:
        return False
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def cmdline_of(pid: int) -> list[str]:
    try:
        return psutil.Process(pid).cmdline()
    except psutil.Error:
        return []


def find_process(marker: str) -> int | None:
    """Pid of a live process whose command line mentions ``marker`` (our config path)."""
    for proc in psutil.process_iter(["pid", "cmdline"]):
        cmd = proc.info.get("cmdline") or []
        if any(marker in part for part in cmd) and alive(proc.pid):
            return int(proc.pid)
    return None


def our_pid(pid_file: Path, marker: str) -> int | None:
    """Pid of our process: the pid file if it still runs our config, else a search by marker.

    The fallback re-adopts a service whose pid file was lost, instead of reporting its port
    as taken by a stranger.
    """
    pid = read_pid(pid_file)
    if pid is not None and alive(pid) and any(marker in part for part in cmdline_of(pid)):
        return pid
    return find_process(marker)


def read_pid(pid_file: Path) -> int | None:
    try:
        return int(pid_file.read_text().split()[0])  # postmaster.pid: pid is line 1
    except (OSError, ValueError, IndexError):
        return None


def terminate(pid: int, name: str, grace: float = 20.0) -> None:
    """SIGTERM, wait up to ``grace`` seconds for a clean shutdown, then SIGKILL."""
    try:
        proc = psutil.Process(pid)
        proc.send_signal(signal.SIGTERM)
    except psutil.NoSuchProcess:
        return
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        if not alive(pid):
            return
        time.sleep(0.2)
    progress(f"{name}: pid {pid} ignored SIGTERM for {grace:.0f}s, sending SIGKILL")
    with contextlib.suppress(psutil.NoSuchProcess):
        proc.kill()
        proc.wait(timeout=10)


def wait_until(
    check: Callable[[], bool],
    timeout: float,
    interval: float = 0.25,
    abort: Callable[[], bool] | None = None,
) -> bool:
    """Poll ``check`` until true or ``timeout``; stop early when ``abort`` says it is hopeless."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        if abort is not None and abort():
            return check()
        time.sleep(interval)
    return check()


def await_ready(name: str, pid: int, ready: Callable[[], bool], log: Path,
                timeout: float, patience: float | None = None) -> None:
    """Wait until ``ready``; if it never is (or the process dies), stop it and raise with the
    tail of its log, which is where the reason is.

    ``timeout`` counts from the last line the service logged, not from the start: a broker
    loading thousands of partitions logs steadily and is slow but healthy, a hung one goes quiet.
    ``patience`` caps the total wait (default ten times ``timeout``).
    """
    cap = time.monotonic() + (patience if patience is not None else 10 * timeout)
    seen = (-1, time.monotonic())  # (log size, when it last changed)

    def quiet_for() -> float:
        nonlocal seen
        try:
            size = log.stat().st_size
        except OSError:
            size = -1
        if size != seen[0]:
            seen = (size, time.monotonic())
        return time.monotonic() - seen[1]

    def hopeless() -> bool:
        return not alive(pid) or quiet_for() > timeout or time.monotonic() > cap

    started = time.monotonic()
    if not wait_until(ready, cap - started, abort=hopeless):
        if alive(pid):
            terminate(pid, name, grace=5)
        waited = time.monotonic() - started
        raise ServiceError(
            f"{name}: not ready after {waited:.0f}s (gives up after {timeout:.0f}s without a new "
            f"log line). Log {log} ends with:\n{log_tail(log)}"
        )


def stop_pid_service(name: str, pid: int | None, pid_file: Path) -> None:
    """Stop a service we started as a plain process, and forget its pid file."""
    if pid is not None:
        progress(f"{name}: stopping pid {pid}")
        terminate(pid, name)
    pid_file.unlink(missing_ok=True)


def log_tail(path: Path, lines: int = 30) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:])


def run(
    cmd: Sequence[str],
    what: str,
    cwd: Path | None = None,
    env: Mapping[str, str] | None = None,
    log: Path | None = None,
    stdin: str | None = None,
    timeout: float | None = None,
) -> str:
    """Run a setup command; on failure raise a ServiceError carrying its output tail.

    Errors and ``log`` name only the program and ``what``, never the arguments: some carry
    secrets (pass those through ``stdin``, a file or the environment instead).
    """
    program = Path(cmd[0]).name
    try:
        result = subprocess.run(
            list(cmd),
            cwd=cwd,
            env=dict(env) if env is not None else None,
            input=stdin,
            stdin=subprocess.DEVNULL if stdin is None else None,
            capture_output=True,
            text=True,
            check=False,
            timeout=timeout,
        )
    except subprocess.TimeoutExpired:
        raise ServiceError(f"{what}: {program} did not finish within {timeout:.0f}s") from None
    output = (result.stdout or "") + (result.stderr or "")
    if log is not None:
        with log.open("a") as fh:
            fh.write(f"$ {program} ({what})\n{output}\n")
    if result.returncode != 0:
        tail = "\n".join(output.splitlines()[-25:])
        raise ServiceError(f"{what} failed ({program} exit {result.returncode}):\n{tail}")
    return result.stdout


def write_private(path: Path, text: str) -> None:
    """Write a file only this user may read, from its first byte (it holds a secret): an
    existing file's mode is tightened before the new content goes in."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        os.fchmod(fd, 0o600)
        fh.write(text)


@contextlib.contextmanager
def locked(path: Path) -> Iterator[None]:
    """Inter-process lock so parallel `up`s (xdist workers, CI steps) never race a build."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def env_with(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(extra)
    return env
