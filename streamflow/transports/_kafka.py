"""The Kafka transport on aiokafka: idempotent producer with acks=all, read_committed consumers."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Awaitable, Collection, Mapping, Sequence
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.abc import ConsumerRebalanceListener
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.coordinator.assignors.range import RangePartitionAssignor
from aiokafka.errors import KafkaConnectionError, TopicAlreadyExistsError
from aiokafka.partitioner import murmur2

from ._aio import stop_quietly
from ._kafka_eos import KafkaEosSubscription
from ._protocol import AssignCallback, Message, OutMessage
from ._txn import CURRENT, last_offsets

REBALANCE_TIMEOUT_MS = 120_000


class TransportError(RuntimeError):
    pass



class KafkaTransport:
    name = "kafka"
    messaging_system = "kafka"

    def __init__(self, bootstrap: str, partitions: int = 4, linger_ms: int = 0,
                 exactly_once: bool = False, session_timeout_s: float = 6.0,
                 instance_id: str | None = None) -> None:
        self.bootstrap = bootstrap
        self.partitions = partitions
        self.linger_ms = linger_ms
        self.exactly_once = exactly_once
        self.session_timeout_ms = int(session_timeout_s * 1000)
        self.instance_id = instance_id
        self._producer: AIOKafkaProducer | None = None
        self._subs: list[KafkaSubscription | KafkaEosSubscription] = []
        # Read offsets for end_offsets/committed, by group.
        self._probes: dict[str | None, AIOKafkaConsumer] = {}

    def _producer_config(self, **extra: Any) -> dict[str, Any]:
        # Set deliberately: aiokafka defaults to acks=1 and no idempotence. A batch holds up to
        # 1 MiB (Kafka's default message size limit), so a dead letter of an oversized record
        # still fits.
        return {"bootstrap_servers": self.bootstrap, "acks": "all", "enable_idempotence": True,
                "linger_ms": self.linger_ms, "max_batch_size": 1024 * 1024,
                "request_timeout_ms": 30000, **extra}

    def _consumer_config(self, group: str) -> dict[str, Any]:
        return {
            "bootstrap_servers": self.bootstrap, "group_id": group,
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
        }

    async def start(self) -> None:
        self._producer = AIOKafkaProducer(**self._producer_config())
        try:
            await self._producer.start()
        except KafkaConnectionError as e:
            with contextlib.suppress(Exception):
                await self._producer.stop()
            self._producer = None
            raise TransportError(
                f"cannot reach Kafka at {self.bootstrap}: {e}. Start it with "
                "`streamflow services up kafka`, or unset STREAMFLOW_KAFKA_BOOTSTRAP to use "
                "the embedded transport."
            ) from e

    async def close(self) -> None:
        for s in list(self._subs):
            await s.close()
        for probe in self._probes.values():
            await stop_quietly(probe)
        self._probes.clear()
        if self._producer is not None:
            await self._producer.stop()
            self._producer = None

    async def ensure_topics(self, topics: Sequence[str], compacted: Sequence[str] = (),
                            partitions: Mapping[str, int] | None = None) -> None:
        admin = AIOKafkaAdminClient(bootstrap_servers=self.bootstrap)
        await admin.start()
        try:
            existing = set(await admin.list_topics())
            new = [
                NewTopic(t, (partitions or {}).get(t, self.partitions), 1,
                         topic_configs={"cleanup.policy": "compact"} if t in compacted else None)
                for t in dict.fromkeys([*topics, *compacted]) if t not in existing
            ]
            if new:
                with contextlib.suppress(TopicAlreadyExistsError):
                    await admin.create_topics(new)
        finally:
            await admin.close()
        if new:
            await self._await_leaders([t.name for t in new])

    async def _await_leaders(self, topics: Sequence[str], timeout: float = 30.0) -> None:
        """New topics take a moment to elect leaders; consuming before that only logs errors."""
        if self._producer is None:
            return
        client = self._producer.client
        for t in topics:  # once it tracks topics, the client asks metadata for those only
            client.add_topic(t)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            await client.force_metadata_update()
            cluster = client.cluster
            missing = [
                t for t in topics
                if not cluster.partitions_for_topic(t)
                or any(cluster.leader_for_partition(TopicPartition(t, p)) in (None, -1)
                       for p in cluster.partitions_for_topic(t))
            ]
            if not missing:
                break
            if loop.time() > deadline:
                raise TransportError(f"topics {missing} have no leader after {timeout:.0f}s")
            await asyncio.sleep(0.1)
        # Metadata names a leader a moment before it serves requests; a list-offsets round
        # trip proves it does, so the workers' consumers start on a ready topic.
        probe = AIOKafkaConsumer(bootstrap_servers=self.bootstrap)
        await probe.start()
        fetch_log = logging.getLogger("aiokafka.consumer.fetcher")
        level = fetch_log.level
        fetch_log.setLevel(logging.CRITICAL)
        try:
            tps = [TopicPartition(t, p) for t in topics for p in cluster.partitions_for_topic(t)]
            await asyncio.wait_for(probe.end_offsets(tps), max(1.0, deadline - loop.time()))
        finally:
            fetch_log.setLevel(level)
            await probe.stop()

    async def publish(self, messages: Sequence[OutMessage]) -> None:
        """Inside ``Subscription.partition(n)`` of an exactly-once subscription the messages
        join that partition's transaction; otherwise they are sent and acknowledged now."""
        if self._producer is None:
            raise RuntimeError("kafka transport used before start()")
        if not messages:
            return
        txn = CURRENT.get()
        if txn is not None and await txn.add(self, messages):
            return
        await self._send(self._producer, messages)

    async def publish_nowait(self, messages: Sequence[OutMessage]) -> Awaitable[object] | None:
        if self._producer is None:
            raise RuntimeError("kafka transport used before start()")
        if not messages:
            return None
        txn = CURRENT.get()
        if txn is not None and await txn.add(self, messages):
            return None
        return await self._send(self._producer, messages, wait=False)

    async def _send(self, producer: AIOKafkaProducer, messages: Sequence[OutMessage],
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
        for (topic, partition), group in groups.items():
            batch = producer.create_batch()
            for m in group:
                if batch.append(key=m.key, value=m.value, timestamp=None,
                                headers=m.headers) is None:  # full: send it, start another
                    futs.append(await producer.send_batch(batch, topic, partition=partition))
                    batch = producer.create_batch()
                    if batch.append(key=m.key, value=m.value, timestamp=None,
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

    async def partition_count(self, topic: str) -> int:
        if self._producer is None:
            raise RuntimeError("kafka transport used before start()")
        return len(await self._producer.partitions_for(topic))

    async def end_offsets(self, topic: str) -> dict[int, int]:
        return await self._offsets(None, topic)

    async def committed(self, group: str, topic: str) -> dict[int, int]:
        return await self._offsets(group, topic)

    async def _offsets(self, group: str | None, topic: str) -> dict[int, int]:
        """End offsets (``group`` None) or a group's commits, read without joining it."""
        consumer = self._probes.get(group)
        if consumer is None:  # one per group (None: end offsets), never joining it
            consumer = AIOKafkaConsumer(bootstrap_servers=self.bootstrap, group_id=group,
                                        enable_auto_commit=False,
                                        isolation_level="read_committed")
            await consumer.start()
            self._probes[group] = consumer
        parts = consumer.partitions_for_topic(topic)
        if not parts:
            await consumer._client.force_metadata_update()
            parts = consumer.partitions_for_topic(topic) or set()
        tps = [TopicPartition(topic, p) for p in sorted(parts)]
        if group is None:
            ends = await consumer.end_offsets(tps)
            return {tp.partition: off for tp, off in ends.items()}
        return {tp.partition: (await consumer.committed(tp)) or 0 for tp in tps}

    async def read_topic(self, topic: str, partitions: Collection[int] | None = None
                         ) -> list[Message]:
        consumer = AIOKafkaConsumer(
            bootstrap_servers=self.bootstrap, enable_auto_commit=False,
            isolation_level="read_committed", auto_offset_reset="earliest",
        )
        await consumer.start()
        try:
            parts = consumer.partitions_for_topic(topic) or set()
            if not parts:
                await consumer._client.force_metadata_update()
                parts = consumer.partitions_for_topic(topic) or set()
            tps = [TopicPartition(topic, p) for p in sorted(parts)
                   if partitions is None or p in partitions]
            if not tps:
                return []
            consumer.assign(tps)
            await consumer.seek_to_beginning(*tps)
            ends = await consumer.end_offsets(tps)
            out: list[Message] = []
            while True:
                positions = [await consumer.position(tp) for tp in tps]
                if all(pos >= ends[tp] for pos, tp in zip(positions, tps, strict=True)):
                    break
                batches = await consumer.getmany(*tps, timeout_ms=500)
                for records in batches.values():
                    out.extend(Message(r.topic, r.partition, r.offset, r.key, r.value,
                                       list(r.headers), r.timestamp) for r in records)
            return out
        finally:
            await consumer.stop()

    async def subscribe(
        self, group: str, topics: Sequence[str], on_assign: AssignCallback | None = None,
        on_revoke: AssignCallback | None = None,
    ) -> KafkaSubscription | KafkaEosSubscription:
        if self.exactly_once:
            eos = KafkaEosSubscription(self, group, list(topics), on_assign, on_revoke)
            await eos.start()
            self._subs.append(eos)
            return eos
        consumer = AIOKafkaConsumer(**self._consumer_config(group))
        await consumer.start()
        consumer.subscribe(topics, listener=_Listener(topics[0], on_assign, on_revoke))
        sub = KafkaSubscription(self, consumer, group, list(topics))
        self._subs.append(sub)
        return sub

    async def _poll(self, consumer: AIOKafkaConsumer, max_records: int,
                    timeout: float, topics: Collection[str] | None = None) -> list[Message]:
        tps: list[TopicPartition] = []
        if topics is not None:
            tps = [tp for tp in consumer.assignment() if tp.topic in topics]
            if not tps:  # nothing of those assigned (yet): getmany() would read everything
                await asyncio.sleep(timeout)
                return []
        batches = await consumer.getmany(*tps, timeout_ms=int(timeout * 1000),
                                         max_records=max_records)
        return [Message(r.topic, r.partition, r.offset, r.key, r.value, list(r.headers),
                        r.timestamp)
                for records in batches.values() for r in records]

    async def _lags(self, consumer: AIOKafkaConsumer,
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


class _Listener(ConsumerRebalanceListener):  # type: ignore[misc]
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


class KafkaSubscription:
    """At least once: offsets are committed after the outputs are acknowledged."""

    exactly_once = False

    def __init__(
        self, t: KafkaTransport, consumer: AIOKafkaConsumer, group: str, topics: list[str]
    ) -> None:
        self.t = t
        self.consumer = consumer
        self.group = group
        self.topics = topics
        self._closed = False

    @property
    def assigned(self) -> set[int]:
        return {tp.partition for tp in self.consumer.assignment() if tp.topic == self.topics[0]}

    async def poll(self, max_records: int = 500, timeout: float = 0.5,
                   topics: Collection[str] | None = None, append: bool = False
                   ) -> list[Message]:
        return await self.t._poll(self.consumer, max_records, timeout, topics)

    async def commit(self, messages: Sequence[Message]) -> None:
        last = last_offsets(messages)
        if last:
            await self.consumer.commit({TopicPartition(*tp): off for tp, off in last.items()})

    async def lag(self) -> int:
        lags = await self.lags()
        return sum(lags.values()) if lags else 1 << 30  # no metadata yet: not drained

    async def lags(self) -> dict[tuple[str, int], int]:
        return await self.t._lags(self.consumer, self.topics)

    async def close(self) -> None:
        if not self._closed:
            self._closed = True
            await stop_quietly(self.consumer)
            if self in self.t._subs:
                self.t._subs.remove(self)
