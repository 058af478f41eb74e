"""The latency workload: the map work under an open-loop arrival rate.

The benchmark process is the load generator and the reader; the system runs in its own child
process. Once the child answers a probe record (so group joins are over), records are sent at
a fixed rate on a 1 ms tick, whatever the system does (open loop), each stamped with
``time.time_ns()`` just before it is handed to the producer (the stamp travels in the record,
and the map carries it to its output). A read_committed consumer of the output takes the
latency as its clock minus the stamp when the output is returned to it. The first
``WARMUP_S`` are discarded. A system *sustains* the rate when the generator held it within
2%, every output arrived, and the records sent in the last 2 s came out with p99 <= 1 s (a
system that falls behind piles up a backlog there); otherwise its latencies are null.
"""

from __future__ import annotations

import asyncio
import random
import time
from pathlib import Path
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from ._kafka import client_options
from ._peers_common import (
    Headers,
    Spec,
    arrival_headers,
    create_topics,
    partition_of,
    sale_json,
    traceparent,
)
from ._peers_measure import Child, spawn

WARMUP_S = 3.0
_MARK = 1_999_999_999_999_999_999  # stands in for the stamp in a prepared record
DRAIN_S = 10.0
READY_TIMEOUT_S = 120.0


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))]


class Reader:
    """Reads the output topic, keeping each record's latency by its key."""

    def __init__(self, spec: Spec) -> None:
        self.spec = spec
        self.latency_ms: dict[bytes, float] = {}
        self.recv_ns: list[int] = []
        self.duplicates = 0
        self.probes = 0
        self._stop = asyncio.Event()

    async def run(self) -> None:
        consumer = AIOKafkaConsumer(**client_options(self.spec.bootstrap),
                                    isolation_level="read_committed", fetch_max_wait_ms=100)
        await consumer.start()
        try:
            tps = [TopicPartition(self.spec.topic(self.spec.output), p)
                   for p in range(self.spec.partitions)]
            consumer.assign(tps)
            await consumer.seek_to_beginning(*tps)
            while not self._stop.is_set():
                got = await consumer.getmany(timeout_ms=100, max_records=5000)
                now = time.time_ns()
                for msgs in got.values():
                    for m in msgs:
                        if m.key.startswith(b"P"):
                            self.probes += 1
                            continue
                        if m.key in self.latency_ms:
                            self.duplicates += 1
                            continue
                        self.latency_ms[m.key] = (now - orjson.loads(m.value)["sent_ns"]) / 1e6
                        self.recv_ns.append(now)
        finally:
            await consumer.stop()

    def stop(self) -> None:
        self._stop.set()


class _Generator:
    """Prepares records (everything but the stamp, so the generator keeps its rate) and sends
    them, stamped just before each is handed to the producer."""

    def __init__(self, spec: Spec, producer: AIOKafkaProducer) -> None:
        self.spec, self.producer = spec, producer
        self.topic = spec.topic(spec.inputs[0])
        self.rnd = random.Random(11)

    def prepared(self, prefix: str, i: int) -> tuple[bytes, bytes, bytes, Headers, int]:
        key = f"{prefix}{i:09d}"
        head, _, tail = sale_json(i, _MARK, self.rnd, prefix).partition(str(_MARK).encode())
        ratio = self.spec.trace_ratio
        tp = traceparent(self.rnd, ratio) if ratio else None
        k = key.encode()
        return k, head, tail, arrival_headers("in", key, tp), partition_of(k)

    async def send(self, rec: tuple[bytes, bytes, bytes, Headers, int]) -> None:
        k, head, tail, headers, part = rec
        stamp = time.time_ns()
        await self.producer.send(self.topic, b"%s%d%s" % (head, stamp, tail), key=k,
                                 headers=headers, partition=part)

    async def probe(self, reader: Reader, child: Child) -> bool:
        """Send probe records until the system answers one (its group joins are over)."""
        deadline = time.monotonic() + READY_TIMEOUT_S
        j = 0
        while reader.probes == 0 and child.alive() and time.monotonic() < deadline:
            await self.send(self.prepared("P", j))
            j += 1
            await asyncio.sleep(0.25)
        return reader.probes > 0

    async def open_loop(self, total: int, rate: float) -> tuple[list[float], float]:
        """Send ``total`` records at ``rate``; (when each was sent, seconds it took)."""
        records = [self.prepared("S", i) for i in range(total)]
        sent_at: list[float] = []
        start = time.perf_counter()
        i = 0
        while i < total:
            due = min(total, int((time.perf_counter() - start) * rate) + 1)
            while i < due:
                sent_at.append(time.perf_counter() - start)
                await self.send(records[i])
                i += 1
            await asyncio.sleep(0.001)
        return sent_at, time.perf_counter() - start


async def latency_run(spec: Spec, rate: float, seconds: float, logdir: Path) -> dict[str, Any]:
    await create_topics(spec.bootstrap, [spec.topic(spec.inputs[0]), spec.topic(spec.output)])
    child = spawn(spec, logdir)
    reader = Reader(spec)
    reading = asyncio.create_task(reader.run())
    producer = AIOKafkaProducer(**client_options(spec.bootstrap), acks="all",
                                enable_idempotence=True, linger_ms=0)
    await producer.start()
    gen = _Generator(spec, producer)
    total = int(rate * seconds)
    result: dict[str, Any] = {"records_per_s": None, "p50_ms": None, "p99_ms": None,
                              "p999_ms": None, "sustained": False, "rss_mb": None,
                              "cpu_s_per_million": None, "expected": total, "capped": False}
    try:
        if not await gen.probe(reader, child):
            child.notes.append("never answered a probe record")
            return result
        cpu0 = child.cpu_s()
        sent_at, elapsed = await gen.open_loop(total, rate)
        await producer.flush()
        for _ in range(int(DRAIN_S / 0.05)):  # until every output is in, or DRAIN_S
            if len(reader.latency_ms) >= total:
                break
            await asyncio.sleep(0.05)
        cpu1 = child.cpu_s()
        result.update(_figures(reader, sent_at, total, rate, elapsed, seconds))
        result["cpu_s_per_million"] = (cpu1 - cpu0) / total * 1e6
        result["rss_mb"] = child.peak_rss_mb()
        return result
    finally:
        await producer.stop()
        await child.stop()
        await asyncio.sleep(1.0)  # outputs (duplicates, say) the child wrote as it stopped
        reader.stop()
        await reading
        # Counted once the child is gone, so a duplicate written at shutdown shows too.
        result.update(outputs=len(reader.latency_ms) + reader.duplicates,
                      distinct=len(reader.latency_ms), duplicates=reader.duplicates,
                      **child.report())
        notes = [*child.notes, *([result["note"]] if result.get("note") else [])]
        result["note"] = "; ".join(notes) or None


def _figures(reader: Reader, sent_at: list[float], total: int, rate: float, elapsed: float,
             seconds: float) -> dict[str, Any]:
    keys = [f"S{i:09d}".encode() for i in range(total)]
    got = [reader.latency_ms.get(k) for k in keys]
    measured = [ms for ms, t in zip(got, sent_at, strict=True)
                if ms is not None and t >= WARMUP_S]
    tail = [ms for ms, t in zip(got, sent_at, strict=True)
            if ms is not None and t >= seconds - 2.0]
    lost = sum(1 for ms in got if ms is None)
    achieved = total / elapsed
    tail_p99 = percentile(tail, 0.99)
    held = achieved >= 0.98 * rate
    sustained = held and lost == 0 and tail_p99 is not None and tail_p99 <= 1000
    recv = sorted(reader.recv_ns)
    out_rate = (len(recv) - 1) / ((recv[-1] - recv[0]) / 1e9) if len(recv) > 1 else None
    notes = []
    if not held:
        notes.append(f"the generator reached only {achieved:,.0f}/s")
    if lost:
        notes.append(f"{lost:,} of {total:,} outputs not out {DRAIN_S:.0f} s after the last "
                     "send")
    if reader.duplicates:
        notes.append(f"{reader.duplicates} duplicate outputs")
    if tail_p99 is not None and tail_p99 > 1000:
        notes.append(f"fell behind: p99 of the last 2 s {tail_p99:,.0f} ms")

    def r(v: float | None) -> float | None:
        return None if v is None or not sustained else round(v, 2)

    return {"records_per_s": out_rate, "achieved_rate": round(achieved, 1),
            "p50_ms": r(percentile(measured, 0.5)), "p99_ms": r(percentile(measured, 0.99)),
            "p999_ms": r(percentile(measured, 0.999)), "sustained": sustained,
            "outputs": len(reader.latency_ms), "expected": total,
            "note": "; ".join(notes) or None}
