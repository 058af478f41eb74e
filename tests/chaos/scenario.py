"""The faults themselves, shared by both transports: each is noted in the report with when it
fired, how much input was still unsent, and, for a kill, the recovery time."""

from __future__ import annotations

import asyncio
import logging
import random
import signal
import time
from typing import Any

from tests.faults import CRASH_BEFORE_COMMIT

from .alo import AtLeastOnce
from .feed import Feeder
from .harness import CommitWatch, Fleet, Proc, kill_broker, restart_broker

log = logging.getLogger("chaos")
HOOK = CRASH_BEFORE_COMMIT


class Chaos:
    """Faults on the exactly-once fleet; ``alo``, the at-least-once fleet, if given, gets
    the same worker kills once the exactly-once fleet has recovered from each (plain
    SIGKILLs: its commits have no crash hook), and the same broker kill."""

    def __init__(self, fleet: Fleet, watch: CommitWatch, feeder: Feeder,
                 rnd: random.Random, alo: AtLeastOnce | None = None) -> None:
        self.fleet, self.watch, self.feeder, self.rnd = fleet, watch, feeder, rnd
        self.alo = alo
        self.t0 = time.time()
        self.faults: list[dict[str, Any]] = []
        self.recovery: list[float | None] = []
        self.exits: dict[str, int] = {}
        self.broker_recovery_s: float | None = None

    def _note(self, fault: str, at: float, **extra: Any) -> dict[str, Any]:
        entry = {"fault": fault, "t_s": round(at - self.t0, 2),
                 "unsent": round(1 - self.feeder.fraction_sent, 3), **extra}
        self.faults.append(entry)
        log.info("fault %s", entry)
        return entry

    async def _recover(self, entry: dict[str, Any], at: float,
                       owned: dict[str, list[int]]) -> None:
        r = await self.watch.recovery(at, owned)
        entry["recovery_s"] = r
        self.recovery.append(r)
        log.info("recovered from %s in %s s", entry["fault"], r)

    async def kill(self, worker_id: str, restart_env: dict[str, str] | None = None,
                   ) -> tuple[Proc, asyncio.Task[tuple[int, float]] | None]:
        """SIGKILL the worker and restart it at once with the same id; returns the new
        process and, if it was started with the crash hook, a task that sees it end (started
        at once: its time of death counts)."""
        proc = self.fleet.current[worker_id]
        owned = await self.fleet.fresh_assignments(proc)
        at = await self.fleet.kill(proc)
        entry = self._note("sigkill", at, worker=worker_id, owned=owned)
        new = self.fleet.start(worker_id, restart_env)
        ended = asyncio.create_task(self.fleet.wait_exit(new, 300)) if restart_env else None
        await self._recover(entry, at, owned)
        if self.alo is not None:  # once recovered: two restarts at once would slow both
            await self.alo.kill(worker_id)
        return new, ended

    async def kill_before_commit(self, worker_id: str) -> None:
        """SIGKILL, then restart with the crash hook: the worker kills itself between a
        produce and its commit (the second kill); then it is restarted as usual."""
        old = self.fleet.current[worker_id]
        nth = self.rnd.randint(20, 80)
        proc, ended = await self.kill(worker_id, {HOOK: str(nth)})
        assert ended is not None
        rc, at = await ended
        assert rc == -signal.SIGKILL, f"expected the hook's SIGKILL, got {rc}:\n{proc.tail()}"
        owned = proc.assignments or old.assignments
        entry = self._note("crash-before-commit", at, worker=worker_id, owned=owned,
                           nth_commit=nth)
        self.fleet.start(worker_id)
        await self._recover(entry, at, owned)
        if self.alo is not None:
            await self.alo.kill(worker_id, "sigkill-again")

    async def broker(self) -> None:
        """Hard-stop the broker and start it again. Input is paused meanwhile, so no send is
        in flight when it dies (an ambiguous send would have to be repeated)."""
        await self.feeder.pause()
        committed = self.alo.committed_now() if self.alo is not None else {}
        at = await kill_broker()
        entry = self._note("broker-sigkill", at)
        if self.alo is not None:
            self.alo.broker_killed(at, committed)
        await asyncio.sleep(self.rnd.uniform(1, 3))
        up = await restart_broker()
        entry["down_s"] = round(up - at, 2)
        self.feeder.resume()
        everything = {g: list(range(64)) for g in self.watch.groups}
        r = await self.watch.recovery(at, everything, timeout=180)
        entry["recovery_s"] = self.broker_recovery_s = r
        log.info("broker back after %s s; first commit after %s s", entry["down_s"], r)
        await asyncio.sleep(2)
        self.check_alive()

    async def scale(self, worker_id: str = "w3") -> None:
        """A worker joins, takes partitions over, and leaves with SIGTERM (must exit 0)."""
        proc = self.fleet.start(worker_id)
        entry = self._note("worker-added", time.time(), worker=worker_id)
        await self.fleet.wait_ready(proc)
        entry["owned"] = dict(proc.assignments)
        await asyncio.sleep(self.rnd.uniform(3, 6))
        at = time.time()
        rc = await self.fleet.terminate(proc)
        del self.fleet.current[worker_id]
        self.exits[worker_id] = rc
        self._note("worker-removed", at, worker=worker_id, exit_code=rc,
                   stop_s=round(time.time() - at, 2))

    async def gap(self, low: float = 2, high: float = 5) -> None:
        await asyncio.sleep(self.rnd.uniform(low, high))
        self.check_alive()

    def check_alive(self) -> None:
        self.fleet.check_alive()
        if self.alo is not None:
            self.alo.check_alive()
