"""Exactly-once building blocks on the real broker: groups, transactions, read_committed.

StreamFlow's exactly-once effects rest on consume-transform-produce with the consumer offsets
committed inside the producer transaction; this proves the pinned broker and aiokafka do that.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from streamflow import devservices as services

pytestmark = pytest.mark.kafka

BOOTSTRAP = services.KAFKA_BOOTSTRAP
TIMEOUT = 30.0


@pytest.fixture(scope="module")
def kafka() -> Iterator[str]:
    """The real broker; never skipped: if it cannot start, the tests fail with the reason."""
    status = services.up(["kafka"])["kafka"]
    assert status.running, status
    yield BOOTSTRAP


def _name(kind: str) -> str:
    return f"test-{kind}-{uuid.uuid4().hex[:12]}"


async def _create_topics(*names: str) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=BOOTSTRAP)
    await admin.start()
    try:
        await admin.create_topics(
            [NewTopic(n, num_partitions=1, replication_factor=1) for n in names]
        )
    finally:
        await admin.close()


async def _committed(group: str) -> dict[TopicPartition, int]:
    admin = AIOKafkaAdminClient(bootstrap_servers=BOOTSTRAP)
    await admin.start()
    try:
        offsets = await admin.list_consumer_group_offsets(group)
    finally:
        await admin.close()
    return {tp: meta.offset for tp, meta in offsets.items()}


async def _drain(topic: str, isolation_level: str) -> list[bytes]:
    """Every visible value in ``topic`` (partition 0), read until the visible end offset."""
    tp = TopicPartition(topic, 0)
    consumer = AIOKafkaConsumer(
        bootstrap_servers=BOOTSTRAP,
        isolation_level=isolation_level,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
    )
    await consumer.start()
    try:
        consumer.assign([tp])
        await consumer.seek_to_beginning(tp)
        end = (await consumer.end_offsets([tp]))[tp]
        values: list[bytes] = []
        async with asyncio.timeout(TIMEOUT):
            while await consumer.position(tp) < end:
                batch = await consumer.getmany(tp, timeout_ms=500)
                values.extend(m.value for m in batch.get(tp, []) if m.value is not None)
        return values
    finally:
        await consumer.stop()


async def test_consumer_joins_group_and_gets_assignment(kafka: str) -> None:
    topic, group = _name("topic"), _name("group")
    await _create_topics(topic)
    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=kafka, group_id=group, enable_auto_commit=False
    )
    await consumer.start()
    try:
        async with asyncio.timeout(TIMEOUT):
            while not consumer.assignment():
                await consumer.getmany(timeout_ms=200)
        assert consumer.assignment() == {TopicPartition(topic, 0)}
    finally:
        await consumer.stop()


async def test_transaction_commits_offsets_and_abort_is_invisible(kafka: str) -> None:
    source, sink, group = _name("in"), _name("out"), _name("group")
    await _create_topics(source, sink)
    src = TopicPartition(source, 0)

    plain = AIOKafkaProducer(bootstrap_servers=kafka, acks="all")
    await plain.start()
    try:
        for i in range(3):
            await plain.send_and_wait(source, f"in-{i}".encode())
    finally:
        await plain.stop()

    consumer = AIOKafkaConsumer(
        source,
        bootstrap_servers=kafka,
        group_id=group,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        isolation_level="read_committed",
    )
    producer = AIOKafkaProducer(
        bootstrap_servers=kafka,
        transactional_id=_name("txn"),
        enable_idempotence=True,
        acks="all",
    )
    await consumer.start()
    await producer.start()
    try:
        consumed: list[ConsumerRecord[bytes, bytes]] = []
        async with asyncio.timeout(TIMEOUT):
            while len(consumed) < 3:
                batch = await consumer.getmany(timeout_ms=500)
                consumed.extend(m for msgs in batch.values() for m in msgs)
        assert [m.value for m in consumed] == [b"in-0", b"in-1", b"in-2"]
        assert src not in await _committed(group)

        async with producer.transaction():
            await producer.send_and_wait(sink, b"committed")
            await producer.send_offsets_to_transaction({src: consumed[-1].offset + 1}, group)

        await producer.begin_transaction()
        await producer.send_and_wait(sink, b"aborted")
        await producer.abort_transaction()
    finally:
        await producer.stop()
        await consumer.stop()

    assert (await _committed(group))[src] == 3
    assert await _drain(sink, "read_committed") == [b"committed"]
    # The aborted record really reached the log; only isolation hides it.
    assert await _drain(sink, "read_uncommitted") == [b"committed", b"aborted"]
