"""How a worker's run ends: waiting for its sources or a stop request, then draining (or,
when serving, finishing) its consumers."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence

from ._consumer import _Consumer

log = logging.getLogger("streamflow.engine")


async def wait_sources(
    stop_requested: asyncio.Event, src_tasks: list[asyncio.Task[None]],
    consumer_tasks: list[asyncio.Task[None]],
) -> None:
    stop = asyncio.create_task(stop_requested.wait())
    pending = set(src_tasks)
    try:
        while pending:
            done, _ = await asyncio.wait(
                pending | {stop} | set(consumer_tasks), return_when=asyncio.FIRST_COMPLETED
            )
            for t in done:
                if t in consumer_tasks:
                    t.result()  # a consumer died: surface its error now
                    raise RuntimeError(f"{t.get_name()} stopped unexpectedly")
                if t in pending:
                    pending.discard(t)
                    t.result()
            if stop.done():
                for t in pending:
                    t.cancel()
                await asyncio.gather(*pending, return_exceptions=True)
                return
    finally:
        stop.cancel()


async def wait_stop(stop_requested: asyncio.Event, tasks: list[asyncio.Task[None]]) -> None:
    stop = asyncio.create_task(stop_requested.wait())
    try:
        done, _ = await asyncio.wait({stop, *tasks}, return_when=asyncio.FIRST_COMPLETED)
        for t in done:
            if t is not stop:
                t.result()
                raise RuntimeError(f"{t.get_name()} stopped unexpectedly")
    finally:
        stop.cancel()


async def finish(consumers: Sequence[_Consumer], tasks: list[asyncio.Task[None]],
                 timeout_s: float) -> bool:
    """Each consumer completes the batch in hand and commits; bounded by the drain
    timeout, after which the rest is cancelled (uncommitted: the next owner redoes it)."""
    for cons in consumers:
        cons.stop()
    if not tasks:
        return True
    _, late = await asyncio.wait(tasks, timeout=timeout_s)
    for t in late:
        t.cancel()
    if late:
        log.warning("%d consumers did not finish within %.0fs; their uncommitted work is "
                    "redone by the next owner", len(late), timeout_s)
    return not late


async def drain(
    consumers: Sequence[_Consumer], tasks: list[asyncio.Task[None]], timeout_s: float,
    wait_deadlines: bool = False,
) -> bool:
    """Wait until every consumer has committed everything upstream produced.

    Lags are read upstream first: a stage commits only after publishing its outputs, so
    once each lag in topological order reads zero, nothing is left in flight.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    clean_rounds = 0
    while loop.time() < deadline:
        for t in tasks:
            if t.done():
                t.result()
                raise RuntimeError(f"{t.get_name()} stopped unexpectedly")
        lags = [await c.lag() for c in consumers]
        idle = sum(lags) == 0 and not any(c.busy() for c in consumers)
        if idle and wait_deadlines:
            left = deadline - loop.time()
            idle = not any(d is not None and d < left
                           for d in (c.next_deadline_s() for c in consumers))
        clean_rounds = clean_rounds + 1 if idle else 0
        if clean_rounds >= 2:
            return True
        await asyncio.sleep(0.05)
    log.warning("drain timed out after %.0fs; uncommitted work is redelivered next run",
                timeout_s)
    return False
