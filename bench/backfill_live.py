"""Live latency while a 100,000-record backfill runs beside it, on Kafka, in one run.

One worker serves ``bench/_backfill_pipeline.py`` (an hourly event stream → ``score`` map
stage → ``scored``) at shipped defaults, tracing off. A load generator in its own process
produces live events at ``--rate`` (open loop) through the first two phases; latency is from
the stamp taken just before an event is handed to the producer to the entry of its stage run
(one host, one clock).

Phases: (1) live alone for ``--idle-s`` seconds (the first 3 s discarded): ``live_p99_ms_idle``;
(2) ``streamflow backfill start`` in its own process replays 100,000 events of history (50
hours): the measured window runs from the first backfill run to the 100,000th, and live events
sent inside it give ``live_p99_ms_backfill``; ``backfill_rps`` is 100,000 over that window;
(3) live stops and a second, disjoint 100,000-event backfill runs alone: ``backfill_rps_solo``.

A run counts only if each backfill completed exactly 100,000 events and every live event sent
completed too, each once: the stage's runs are counted by event id, and the output topic is
read back and counted by key after the worker stops (``problems`` says what was lost or
duplicated). Otherwise ``met`` is false whatever the latencies.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaProducer
from aiokafka.partitioner import murmur2

from streamflow import Arrival, Settings, Worker, stable_id
from streamflow import devservices as services
from streamflow.devservices import delete_topics

from . import _backfill_pipeline as bp
from ._kafka import untraced_kafka
from ._met import completion, exact
from ._readback import key_counts
from .latency import percentile

TARGET = str(Path(__file__).resolve().parent / "_backfill_pipeline.py") + ":pipeline"
ROOT = str(Path(__file__).resolve().parent.parent)
WARMUP_S = 3.0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--rate", type=float, default=500.0, help="live events per second")
    parser.add_argument("--idle-s", type=float, default=20.0,
                        help="live alone before the backfill starts")
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--max-concurrency", type=int, default=8,
                        help="the backfill's partitions (hours) in flight")
    parser.add_argument("--backfill-batch", type=int, default=None,
                        help="the worker's backfill_batch (default: the shipped default)")


class LiveLoad:
    """Open-loop live events: the schedule never waits for the system."""

    def __init__(self, producer: AIOKafkaProducer, topic: str, rate: float,
                 partitions: int) -> None:
        self.producer, self.topic, self.rate, self.partitions = producer, topic, rate, partitions
        self.sent = 0
        self.stop = asyncio.Event()

    async def run(self) -> None:
        start = time.perf_counter()
        i = 0
        while not self.stop.is_set():
            delay = start + i / self.rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            hour = f"live-{i % 24:02d}"
            stamp = time.time_ns()
            ev = bp.Event(id=f"live-{i}", hour=hour, at=bp.EPOCH, value=1.0, sent_ns=stamp)
            arr = Arrival(stable_id("events", ev.id), "events", hour, 1, stamp // 1_000_000,
                          "bench", "live", ev.id.encode(), ev.model_dump_json().encode())
            msg = arr.message(self.topic)
            part = (murmur2(hour.encode()) & 0x7FFFFFFF) % self.partitions
            await self.producer.send(msg.topic, msg.value, key=msg.key, headers=msg.headers,
                                     partition=part)
            i += 1
            self.sent = i


def _lat(since_ns: int, until_ns: int) -> list[float]:
    return [(ran - sent) / 1e6 for sent, ran, live, _ in bp.RAN
            if live and since_ns <= sent < until_ns]


def _hour_of(event_id: str) -> int:
    return int(event_id[1:4]) if event_id[:1] == "h" and event_id[1:4].isdigit() else -1


def phase(ran: list[tuple[int, int, bool, str]], hours: tuple[int, int]) -> dict[str, Any]:
    """The runs of the history in ``hours`` (a backfill): ``completion`` of its ids, and the
    window from its first run to the run that completed its last distinct id."""
    runs = [(t, i) for _, t, live, i in ran if not live and hours[0] <= _hour_of(i) < hours[1]]
    want = (hours[1] - hours[0]) * bp.PER_HOUR
    out: dict[str, Any] = completion((i for _, i in runs), bp.history_ids(*hours))
    seen: set[str] = set()
    first = last = 0
    for t, i in sorted(runs):
        first = first or t
        if i not in seen:
            seen.add(i)
            last = t
    out.update(first_ns=first, last_ns=last, want=want,
               rps=len(seen) / max(1e-9, (last - first) / 1e9) if seen else 0.0)
    return out


def _distinct(hours: tuple[int, int]) -> int:
    return len({i for _, _, live, i in bp.RAN if not live and hours[0] <= _hour_of(i) < hours[1]})


async def _backfill(settings: Settings, hours: tuple[int, int], args: argparse.Namespace
                    ) -> dict[str, Any]:
    """Run a backfill driver process over ``hours`` until every event of them ran (or the
    driver failed, or 600 s); its ``phase``."""
    want = (hours[1] - hours[0]) * bp.PER_HOUR
    start = bp.EPOCH + timedelta(hours=hours[0])
    end = bp.EPOCH + timedelta(hours=hours[1])
    env = {**os.environ}
    env.pop("STREAMFLOW_KAFKA_BOOTSTRAP", None)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "streamflow", "backfill", "start", TARGET, "--asset", "events",
        "--from", start.isoformat(), "--to", end.isoformat(), "--kafka",
        str(settings.kafka_bootstrap), "--namespace", settings.namespace,
        "--max-concurrency", str(args.max_concurrency), "--json",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env)
    deadline = time.perf_counter() + 600
    while time.perf_counter() < deadline:
        done = _distinct(hours)
        if done >= want or proc.returncode not in (None, 0):  # done, or the driver failed
            break
        print(f"backfill-live: backfill {done}/{want}", file=sys.stderr)
        await asyncio.sleep(2.0)
    _, err = await proc.communicate()
    if proc.returncode != 0:
        print(err.decode()[-2000:], file=sys.stderr)
    return phase(bp.RAN, hours)


async def _outputs(ns: str, partitions: int, live_sent: int,
                   hours: int) -> dict[str, dict[str, int]]:
    """Every output of the run, read back by key."""
    counts = await key_counts(services.KAFKA_BOOTSTRAP, f"{ns}.scored", partitions)
    return output_completion([k.decode() for k, c in counts.items() for _ in range(c)],
                             live_sent, hours)


def output_completion(keys: list[str], live_sent: int, hours: int) -> dict[str, dict[str, int]]:
    """``completion`` of the outputs' keys, per backfill (the first and second half of the
    ``hours``) and for the live events."""
    half = hours // 2
    return {
        "backfill": completion((k for k in keys if 0 <= _hour_of(k) < half),
                               bp.history_ids(0, half)),
        "solo": completion((k for k in keys if half <= _hour_of(k) < hours),
                           bp.history_ids(half, hours)),
        "live": completion((k for k in keys if k.startswith("live-")),
                           {f"live-{i}" for i in range(live_sent)}),
    }


def accounting(ran: list[tuple[int, int, bool, str]], bf: dict[str, Any], solo: dict[str, Any],
               live_sent: int, outputs: dict[str, dict[str, int]]) -> tuple[bool, list[str]]:
    """Whether every event ran, and came out, exactly once: (all exact, what was not)."""
    live = completion((i for _, _, is_live, i in ran if is_live),
                      {f"live-{i}" for i in range(live_sent)})
    checks = [("backfill runs", bf, bf["want"]), ("solo backfill runs", solo, solo["want"]),
              ("live runs", live, live_sent),
              ("backfill outputs", outputs["backfill"], bf["want"]),
              ("solo backfill outputs", outputs["solo"], solo["want"]),
              ("live outputs", outputs["live"], live_sent)]
    bad = [f"{what}: {c['completed']:,} of {want:,} completed, {c['missing']:,} missing, "
           f"{c['duplicates']:,} duplicated, {c['unexpected']:,} unexpected"
           for what, c, want in checks if not exact(c, want)]
    return not bad, bad


async def _phases(args: argparse.Namespace, settings: Settings, ns: str) -> dict[str, Any]:
    """Live alone, a backfill beside live, the same size backfill alone (the worker runs)."""
    gen: asyncio.subprocess.Process | None = None
    try:
        await asyncio.sleep(6)  # topics created, consumers joined
        gen = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "bench._backfill_load", f"{ns}.events", str(args.rate),
            str(args.partitions), stdout=asyncio.subprocess.PIPE,
            cwd=ROOT)
        print(f"backfill-live: live at {args.rate:.0f}/s alone for {args.idle_s:.0f}s",
              file=sys.stderr)
        t0 = time.time_ns()
        await asyncio.sleep(args.idle_s)
        idle = _lat(t0 + int(WARMUP_S * 1e9), time.time_ns())
        half = bp.HOURS // 2
        print(f"backfill-live: backfill of {half * bp.PER_HOUR} records beside live",
              file=sys.stderr)
        bf = await _backfill(settings, (0, half), args)
        during = _lat(bf["first_ns"], bf["last_ns"])
        gen.terminate()
        out, _ = await gen.communicate()
        sent = int(out.strip() or 0)
        achieved = sent / ((time.time_ns() - t0) / 1e9)
        await asyncio.sleep(2.0)
        print("backfill-live: the same size backfill alone", file=sys.stderr)
        solo = await _backfill(settings, (half, bp.HOURS), args)
        return {"idle": idle, "during": during, "bf": bf, "solo": solo, "live_sent": sent,
                "achieved": achieved}
    finally:
        if gen is not None and gen.returncode is None:
            gen.kill()


async def run(args: argparse.Namespace) -> dict[str, Any]:
    ns = untraced_kafka()
    settings = Settings(kafka_bootstrap=services.KAFKA_BOOTSTRAP, namespace=ns,
                        partitions=args.partitions, state_dir=Path(f"/tmp/{ns}"),
                        http_port=None,
                        **({"backfill_batch": args.backfill_batch} if args.backfill_batch else {}))
    worker = Worker(bp.pipeline, settings, serve=True)
    task = asyncio.create_task(worker.run())
    try:
        ph = await _phases(args, settings, ns)
    finally:
        worker.request_stop()
        await asyncio.wait_for(task, 120)
    try:  # the worker is gone: every output it wrote, and every run it made, is in
        outputs = await _outputs(ns, settings.partitions, ph["live_sent"], bp.HOURS)
    finally:
        await delete_topics(services.KAFKA_BOOTSTRAP, lambda t: t.startswith(ns + "."))
    half = bp.HOURS // 2
    bf, solo = phase(bp.RAN, (0, half)), phase(bp.RAN, (half, bp.HOURS))
    exactly, problems = accounting(bp.RAN, bf, solo, ph["live_sent"], outputs)
    return _result(args, settings, ph, bf, solo, exactly, problems)


def _result(args: argparse.Namespace, settings: Settings, ph: dict[str, Any],
            bf: dict[str, Any], solo: dict[str, Any], exactly: bool,
            problems: list[str]) -> dict[str, Any]:
    idle, during = ph["idle"], ph["during"]
    p99_idle, p99_bf = percentile(idle, 0.99), percentile(during, 0.99)
    ratio = p99_bf / p99_idle if p99_idle and p99_bf is not None else None
    # Issue 16's targets: live latency kept beside the backfill, the backfill not starved.
    met = (p99_idle is not None and p99_idle <= 25 and p99_bf is not None and p99_bf <= 40
           and ratio is not None and ratio <= 2
           and abs(ph["achieved"] - args.rate) <= 0.02 * args.rate
           and exactly and bf["rps"] >= 0.5 * solo["rps"])
    return {
        "transport": "kafka", "live_rate": args.rate,
        "live_achieved_rate": round(ph["achieved"], 1),
        "live_p50_ms_idle": _r(percentile(idle, 0.5)), "live_p99_ms_idle": _r(p99_idle),
        "live_p50_ms_backfill": _r(percentile(during, 0.5)),
        "live_p99_ms_backfill": _r(p99_bf), "live_count_idle": len(idle),
        "live_count_backfill": len(during), "ratio": _r(ratio),
        "backfill_rps": round(bf["rps"], 1), "backfill_rps_solo": round(solo["rps"], 1),
        "backfill_completed": bf["completed"], "backfill_completed_solo": solo["completed"],
        "backfill_duplicates": bf["duplicates"], "backfill_missing": bf["missing"],
        "backfill_duplicates_solo": solo["duplicates"], "backfill_missing_solo": solo["missing"],
        "live_sent": ph["live_sent"], "exactly_once_each": exactly, "problems": problems,
        "backfill_window_s": _r((bf["last_ns"] - bf["first_ns"]) / 1e9),
        "backfill_batch": settings.backfill_batch,
        "target": "live_p99_ms_idle <= 25, live_p99_ms_backfill <= 40 and ratio <= 2, "
                  "live_achieved_rate within 2% of live_rate, backfill_rps >= 0.5 * "
                  "backfill_rps_solo, and exactly_once_each: each backfill exactly 100000 "
                  "completed (every event ran once and came out once: none missing, none "
                  "duplicated), every live event sent likewise",
        "met": met,
    }


def _r(v: float | None) -> float | None:
    return None if v is None else round(v, 2)
