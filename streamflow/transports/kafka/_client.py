"""What both Kafka subscriptions and the transport share: client settings, batched sends,
polls, lag reads and the rebalance listener. Neither subscription imports the other."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Collection, Sequence
from dataclasses import dataclass, field
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.abc import ConsumerRebalanceListener
from aiokafka.coordinator.assignors.range import RangePartitionAssignor
from aiokafka.partitioner import murmur2

from streamflow.connectors import KafkaOptions, KafkaSecurity
from streamflow.errors import TransportError
from streamflow.model import Message, OutMessage
from streamflow.transports._protocol import AssignCallback

REBALANCE_TIMEOUT_MS = 120_000
# aiokafka sends no fetch to a broker while any partition it leads still holds fetched records
# nobody has polled, for up to the fetcher's prefetch backoff (100 ms; no consumer setting).
# A stage reading its backfill lane in small slices always leaves lane records waiting, so
# without a shorter backoff its live records waited up to 100 ms for their fetch. Split polls
# (``topics`` given) happen only while a lane is busy: only they shorten it.
PREFETCH_BACKOFF_S = 0.1
SPLIT_PREFETCH_BACKOFF_S = 0.005


@dataclass(frozen=True, slots=True)
class KafkaClient:
    """How every producer, consumer and admin client of one transport is configured and
    driven; the connection options (TLS, SASL) are built once, from ``security``."""

    bootstrap: str
    linger_ms: int = 0
    session_timeout_ms: int = 6000
    instance_id: str | None = None
    security: KafkaSecurity = field(default_factory=KafkaSecurity)
    options: KafkaOptions = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        # One SSL context and one token provider for every client of this transport.
        object.__setattr__(self, "options", self.security.client_options(self.bootstrap))

    def config(self, **extra: Any) -> KafkaOptions:
        """Connection options plus a client's own: admin clients, probes, tails."""
        return KafkaOptions({**self.options, **extra})

    def producer_config(self, **extra: Any) -> KafkaOptions:
        # Set deliberately: aiokafka defaults to acks=1 and no idempotence. A batch holds up to
        # 1 MiB (Kafka's default message size limit), so a dead letter of an oversized record
        # still fits.
        return self.config(acks="all", enable_idempotence=True, linger_ms=self.linger_ms,
                           max_batch_size=1024 * 1024, request_timeout_ms=30000, **extra)

    def consumer_config(self, group: str) -> KafkaOptions:
        return self.config(**{
            "group_id": group,
            "enable_auto_commit": False, "auto_offset_reset": "earliest",
            "isolation_level": "read_committed",
            # Range keeps partition n of every input topic on the same member: co-partitioning.
            "partition_assignment_strategy": (RangePartitionAssignor,),
            "session_timeout_ms": self.session_timeout_ms,
            "heartbeat_interval_ms": max(500, self.session_timeout_ms // 6),
            # How long the broker waits for members to rejoin a rebalance. aiokafka defaults it
            # to the session timeout (6 s), but a member rejoins only after its assignment
            # callback (fencing, restoring barrier state, loading fired runs) has finished, which
            # can take longer: it was then dropped from the group, and every rejoin started a new
            # rebalance. The Java client waits max.poll.interval.ms (300 s); a dead member is
            # still dropped after the session timeout.
            "rebalance_timeout_ms": max(REBALANCE_TIMEOUT_MS, self.session_timeout_ms),
            # Static membership: a restarted worker with the same id takes its partitions back
            # at once instead of waiting for the session timeout and a rebalance.
            "group_instance_id": f"{self.instance_id}" if self.instance_id else None,
        })

    async def send(self, producer: AIOKafkaProducer, messages: Sequence[OutMessage],
                    wait: bool = True) -> Awaitable[object] | None:
        """Place every message on its partition, then send one batch per partition.

        ``producer.send`` costs about 11 µs per keyed record (a future, a partitioner call, a
        metadata check); appending to a batch builder costs well under 1 µs.
        """
        counts: dict[str, int] = {}
        groups: dict[tuple[str, int], list[OutMessage]] = {}
        for m in messages:
            partition = m.partition
            if partition is None:
                n = counts.get(m.topic)
                if n is None:  # waits for metadata: co-partitioning must not depend on timing
                    n = counts[m.topic] = len(await producer.partitions_for(m.topic))
                placed_by = m.partition_key if m.partition_key is not None else m.key
                # murmur2 as Kafka's default partitioner, so keyed records land where any
                # Kafka client would put them; unkeyed ones anywhere.
                partition = ((murmur2(placed_by) & 0x7FFFFFFF) % n if placed_by is not None
                             else random.randrange(n))
            group = groups.get((m.topic, partition))
            if group is None:
                group = groups[(m.topic, partition)] = []
            group.append(m)
        futs = []
        # An empty value goes as null: Kafka's cleaner drops a key only for a null value (a
        # tombstone); an empty one would keep the key forever.
        for (topic, partition), group in groups.items():
            batch = producer.create_batch()
            for m in group:
                if batch.append(key=m.key, value=m.value or None, timestamp=None,
                                headers=m.headers) is None:  # full: send it, start another
                    futs.append(await producer.send_batch(batch, topic, partition=partition))
                    batch = producer.create_batch()
                    if batch.append(key=m.key, value=m.value or None, timestamp=None,
                                    headers=m.headers) is None:
                        raise TransportError(
                            f"a message for {topic} is larger than the producer's batch size "
                            f"({len(m.value)} bytes of value); raise max_batch_size")
            futs.append(await producer.send_batch(batch, topic, partition=partition))
        if not futs:
            return None
        acks = asyncio.gather(*futs)
        if not wait:
            return acks
        await acks
        return None

    async def poll(self, consumer: AIOKafkaConsumer, max_records: int,
                    timeout: float, topics: Collection[str] | None = None) -> list[Message]:
        tps: list[TopicPartition] = []
        set_prefetch_backoff(
            consumer, PREFETCH_BACKOFF_S if topics is None else SPLIT_PREFETCH_BACKOFF_S)
        if topics is not None:
            tps = [tp for tp in consumer.assignment() if tp.topic in topics]
            if not tps:  # nothing of those assigned (yet): getmany() would read everything
                await asyncio.sleep(timeout)
                return []
        batches = await consumer.getmany(*tps, timeout_ms=int(timeout * 1000),
                                         max_records=max_records)
        return [Message(r.topic, r.partition, r.offset, r.key, r.value or b"", list(r.headers),
                        r.timestamp)
                for records in batches.values() for r in records]

    async def lags(self, consumer: AIOKafkaConsumer,
                    topics: Sequence[str]) -> dict[tuple[str, int], int]:
        tps = [TopicPartition(t, p) for t in topics
               for p in (consumer.partitions_for_topic(t) or ())]
        if not tps:
            return {}
        ends = await consumer.end_offsets(tps)
        out: dict[tuple[str, int], int] = {}
        for tp in tps:
            committed = await consumer.committed(tp)
            out[(tp.topic, tp.partition)] = max(0, ends[tp] - (committed or 0))
        return out


class Listener(ConsumerRebalanceListener):  # type: ignore[misc]
    """Tells the engine which partition numbers it gained or lost, before records flow."""

    def __init__(self, topic: str, on_assign: AssignCallback | None,
                 on_revoke: AssignCallback | None) -> None:
        self.topic, self.on_assign, self.on_revoke = topic, on_assign, on_revoke

    async def on_partitions_revoked(self, revoked: Collection[TopicPartition]) -> None:
        if self.on_revoke is not None:
            await self.on_revoke({tp.partition for tp in revoked if tp.topic == self.topic})

    async def on_partitions_assigned(self, assigned: Collection[TopicPartition]) -> None:
        if self.on_assign is not None:
            await self.on_assign({tp.partition for tp in assigned if tp.topic == self.topic})


def set_prefetch_backoff(consumer: AIOKafkaConsumer, seconds: float) -> None:
    """Set aiokafka's private prefetch backoff (see ``SPLIT_PREFETCH_BACKOFF_S``); aiokafka is
    pinned, and ``tests/test_kafka_client.py`` fails if the attribute goes away."""
    fetcher = consumer._fetcher
    if fetcher is not None and fetcher._prefetch_backoff != seconds:
        fetcher._prefetch_backoff = seconds
