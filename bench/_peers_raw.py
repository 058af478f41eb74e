"""Raw aiokafka in the peers benchmark: the hand-written ceiling for StreamFlow's client.

One consumer (read_committed, manual commits) and one idempotent producer (acks=all), the
records of each polled partition appended to a batch builder (``create_batch``/``send_batch``)
and sent to the same partition number of the output (the inputs are already placed by key).

- at-least-once: sends are not awaited per batch; every 100 ms (StreamFlow's default
  ``commit_interval_s``) the outstanding sends are awaited, then the offsets committed.
- exactly-once (``settings == "exactly-once"``): a transactional producer, one transaction per
  poll, the consumed offsets sent to the transaction.

The join keeps its pending side in a dict (not durable: the other systems keep it in a
changelog-backed store, so this is a ceiling, not a like-for-like).
"""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Callable
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.structs import ConsumerRecord

from ._kafka import client_options
from ._peers_common import Payment, Sale, Spec, price, settle

Work = Callable[[ConsumerRecord[bytes, bytes]], bytes | None]


def _work(spec: Spec) -> Work:
    if spec.workload == "passthrough":
        return lambda m: m.value
    if spec.workload in ("map", "latency"):
        return lambda m: price(Sale.model_validate_json(m.value)).model_dump_json().encode()
    sales_topic = spec.topic("sales")
    sales: dict[bytes, Sale] = {}
    payments: dict[bytes, Payment] = {}

    def join(m: ConsumerRecord[bytes, bytes]) -> bytes | None:
        key = m.key
        if m.topic == sales_topic:
            s = Sale.model_validate_json(m.value)
            p = payments.pop(key, None)
            if p is None:
                sales[key] = s
                return None
            return settle(s, p).model_dump_json().encode()
        p = Payment.model_validate_json(m.value)
        s0 = sales.pop(key, None)
        if s0 is None:
            payments[key] = p
            return None
        return settle(s0, p).model_dump_json().encode()

    return join


async def _send(producer: AIOKafkaProducer, topic: str, work: Work,
                batches: dict[TopicPartition, list[ConsumerRecord[bytes, bytes]]],
                offsets: dict[TopicPartition, int]) -> list[asyncio.Future[Any]]:
    futs: list[asyncio.Future[Any]] = []
    for tp, msgs in batches.items():
        batch = producer.create_batch()
        for m in msgs:
            value = work(m)
            if value is None:
                continue
            if batch.append(key=m.key, value=value, timestamp=None, headers=[]) is None:
                futs.append(await producer.send_batch(batch, topic, partition=tp.partition))
                batch = producer.create_batch()
                batch.append(key=m.key, value=value, timestamp=None, headers=[])
        if batch.record_count():
            futs.append(await producer.send_batch(batch, topic, partition=tp.partition))
        offsets[tp] = msgs[-1].offset + 1
    return futs


async def _main(spec: Spec) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    txn = spec.settings == "exactly-once"
    group = f"{spec.ns}.raw"
    consumer = AIOKafkaConsumer(
        *[spec.topic(t) for t in spec.inputs], **client_options(spec.bootstrap),
        group_id=group, enable_auto_commit=False, auto_offset_reset="earliest",
        isolation_level="read_committed", max_poll_records=500)
    producer = AIOKafkaProducer(
        **client_options(spec.bootstrap), acks="all", enable_idempotence=True, linger_ms=0,
        max_batch_size=1024 * 1024,
        transactional_id=f"{spec.ns}.raw-txn" if txn else None)
    await producer.start()
    await consumer.start()
    out, work = spec.topic(spec.output), _work(spec)
    offsets: dict[TopicPartition, int] = {}
    pending: list[asyncio.Future[Any]] = []
    last_commit = time.monotonic()
    try:
        while not stop.is_set():
            batches = await consumer.getmany(timeout_ms=100, max_records=500)
            if txn:
                if not batches:
                    continue
                offsets = {}
                async with producer.transaction():
                    await _send(producer, out, work, batches, offsets)
                    await producer.send_offsets_to_transaction(offsets, group)
                continue
            pending += await _send(producer, out, work, batches, offsets)
            if offsets and time.monotonic() - last_commit >= 0.1:
                await asyncio.gather(*pending)
                pending.clear()
                await consumer.commit(offsets)
                offsets = {}
                last_commit = time.monotonic()
        if pending:
            await asyncio.gather(*pending)
        if offsets and not txn:
            await consumer.commit(offsets)
    finally:
        await consumer.stop()
        await producer.stop()


def main(spec: Spec) -> None:
    asyncio.run(_main(spec))
