"""The Kafka transport on aiokafka: idempotent producer with acks=all, read_committed consumers."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncGenerator, Awaitable, Collection, Mapping, Sequence

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

from streamflow.connectors import KafkaSecurity
from streamflow.errors import TransportError
from streamflow.model import Message, OutMessage
from streamflow.transports._aio import stop_quietly
from streamflow.transports._protocol import AssignCallback
from streamflow.transports._txn import CURRENT

from ._client import KafkaClient, Listener
from ._diagnose import start_in_time
from ._eos import KafkaEosSubscription
from ._replication import Replication, create, new_topic, resolve, warn_below
from ._subscription import KafkaSubscription
from ._tail import KafkaTail, quiet_missing, seen, tracked_partitions

COMPACTED_CONFIGS = {
    "cleanup.policy": "compact",
    "segment.ms": "3600000",
    "max.compaction.lag.ms": "3600000",
    "min.cleanable.dirty.ratio": "0.1",
    "delete.retention.ms": "86400000",
}
"""Changelogs, the ledger and the other compacted topics StreamFlow creates: the cleaner only
compacts closed segments, and by default a segment stays open for 7 days (or 1 GiB) and a
topic waits until half of it is dirty, so a restore would read days of history. An hour's
segment, a forced compaction after an hour and a 10% dirty ratio bound that to about an hour
of changes beyond the live keys. Tombstones stay 24 hours, whatever the broker's default:
a state checkpoint is used for half that (``streamflow.state._checkpoint.MAX_AGE_S``)."""


def retained_configs(seconds: float) -> dict[str, str]:
    """A topic whose records go after ``seconds``: Kafka deletes whole closed segments, so a
    segment spans at most a quarter of that (and an hour), or records would stay for up to a
    segment's age beyond it."""
    ms = max(1000, int(seconds * 1000))
    return {"cleanup.policy": "delete", "retention.ms": str(ms),
            "segment.ms": str(max(1000, min(3_600_000, ms // 4)))}


def _configs(topic: str, compacted: Sequence[str],
             retained: Mapping[str, float]) -> dict[str, str] | None:
    """A topic both compacted and retained keeps the latest record per key, and only for
    that long (``compact,delete``: idempotency records)."""
    if topic in compacted and topic in retained:
        timed = retained_configs(retained[topic])
        return {**COMPACTED_CONFIGS, **timed, "cleanup.policy": "compact,delete",
                "segment.ms": min(timed["segment.ms"], COMPACTED_CONFIGS["segment.ms"], key=int)}
    if topic in compacted:
        return COMPACTED_CONFIGS
    return retained_configs(retained[topic]) if topic in retained else None


class KafkaTransport:
    name = "kafka"
    messaging_system = "kafka"

    def __init__(self, bootstrap: str, partitions: int = 4, linger_ms: int = 0,
                 exactly_once: bool = False, session_timeout_s: float = 6.0,
                 instance_id: str | None = None,
                 security: KafkaSecurity | None = None,
                 replication: Replication | None = None) -> None:
        self.bootstrap = bootstrap
        self.partitions = partitions
        self.replication = replication or Replication()
        self._warned: set[str] = set()  # topics already warned about (replication)
        self._said: set[str] = set()  # replication warnings already logged (capped factor)
        self.exactly_once = exactly_once
        self.client = KafkaClient(bootstrap, linger_ms, int(session_timeout_s * 1000),
                                  instance_id, security or KafkaSecurity())
        self._producer: AIOKafkaProducer | None = None
        self._subs: list[KafkaSubscription | KafkaEosSubscription] = []
        # Read offsets for end_offsets/committed, by group; made under the lock, or two
        # callers at once (restores of several partitions) would each make one.
        self._probes: dict[str | None, AIOKafkaConsumer] = {}
        self._probing = asyncio.Lock()

    async def start(self) -> None:
        """Connect, or fail within 15 s with one error saying why (``_diagnose``); longer
        only while a bootstrap host answers and aiokafka is still trying a dead one."""
        config = self.client.producer_config()
        self._producer = AIOKafkaProducer(**config)
        try:
            await start_in_time(self._producer.start(), self.bootstrap, self.client.security,
                                self.client.options, config["request_timeout_ms"] / 1000)
        except BaseException:  # a refusal, a cancelled start, a bad host: nothing left open
            with contextlib.suppress(Exception):
                await self._producer.stop()
            self._producer = None
            raise

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
                            partitions: Mapping[str, int] | None = None,
                            retained: Mapping[str, float] | None = None) -> None:
        retained = retained or {}
        admin = AIOKafkaAdminClient(**self.client.config())
        await admin.start()
        try:
            existing = set(await admin.list_topics())
            wanted = list(dict.fromkeys([*topics, *compacted, *retained]))
            new = [t for t in wanted if t not in existing]
            if new:  # the brokers' settings are read only then (a right a reader may lack)
                resolved = await resolve(admin, self.replication, self._said)
                await create(admin, [
                    new_topic(t, (partitions or {}).get(t, self.partitions), resolved,
                              _configs(t, compacted, retained)) for t in new])
            await warn_below(admin, [t for t in wanted if t in existing], self.replication,
                             self._warned)
            old = [t for t in retained if t in existing]
            if old:  # the setting may have changed since the topic was made
                await _retain(admin, {t: _configs(t, compacted, retained) or {} for t in old})
        finally:
            await admin.close()
        if new:
            await self._await_leaders(new)

    async def _await_leaders(self, topics: Sequence[str], timeout: float = 30.0) -> None:
        """New topics take a moment to elect leaders; consuming before that only logs errors."""
        if self._producer is None:
            return
        client = self._producer.client
        quiet_missing(topics)  # the broker's metadata lags its creation a moment
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
                seen(topics)
                break
            if loop.time() > deadline:
                raise TransportError(f"topics {missing} have no leader after {timeout:.0f}s")
            await asyncio.sleep(0.1)
        # Metadata names a leader a moment before it serves requests; a list-offsets round
        # trip proves it does, so the workers' consumers start on a ready topic.
        probe = AIOKafkaConsumer(**self.client.config())
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
        await self.client.send(self._producer, messages)

    async def publish_nowait(self, messages: Sequence[OutMessage]) -> Awaitable[object] | None:
        if self._producer is None:
            raise RuntimeError("kafka transport used before start()")
        if not messages:
            return None
        txn = CURRENT.get()
        if txn is not None and await txn.add(self, messages):
            return None
        return await self.client.send(self._producer, messages, wait=False)

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
        async with self._probing:
            consumer = self._probes.get(group)
            if consumer is None:  # one per group (None: end offsets), never joining it
                consumer = AIOKafkaConsumer(**self.client.config(
                    group_id=group, enable_auto_commit=False, isolation_level="read_committed"))
                await consumer.start()
                self._probes[group] = consumer
        parts = await tracked_partitions(consumer, topic, wait_s=2.0)  # topics that exist
        tps = [TopicPartition(topic, p) for p in sorted(parts)]
        if group is None:
            ends = await consumer.end_offsets(tps)
            return {tp.partition: off for tp, off in ends.items()}
        return {tp.partition: (await consumer.committed(tp)) or 0 for tp in tps}

    async def read_topic(self, topic: str, partitions: Collection[int] | None = None,
                         since_ms: int | None = None) -> list[Message]:
        return [m async for chunk in self.scan_topic(topic, partitions, since_ms) for m in chunk]

    async def scan_topic(self, topic: str, partitions: Collection[int] | None = None,
                         since_ms: int | None = None,
                         from_offsets: Mapping[int, int] | None = None,
                         ) -> AsyncGenerator[list[Message], None]:
        tail = KafkaTail(self.client, topic, partitions)
        try:
            if await tail.start(since_ms, from_offsets):
                async for chunk in tail.chunks():
                    yield chunk
        finally:
            await tail.close()

    async def follow(self, topic: str) -> KafkaTail:
        tail = KafkaTail(self.client, topic)
        try:
            await tail.start()
        except BaseException:
            await tail.close()
            raise
        return tail

    async def subscribe(
        self, group: str, topics: Sequence[str], on_assign: AssignCallback | None = None,
        on_revoke: AssignCallback | None = None,
    ) -> KafkaSubscription | KafkaEosSubscription:
        if self.exactly_once:
            eos = KafkaEosSubscription(self.client, self._subs.remove, group, list(topics),
                                       on_assign, on_revoke)
            await eos.start()
            self._subs.append(eos)
            return eos
        consumer = AIOKafkaConsumer(**self.client.consumer_config(group))
        await consumer.start()
        consumer.subscribe(topics, listener=Listener(topics[0], on_assign, on_revoke))
        sub = KafkaSubscription(self.client, self._subs.remove, consumer, group, list(topics))
        self._subs.append(sub)
        return sub


async def _retain(admin: AIOKafkaAdminClient, wanted: dict[str, dict[str, str]]) -> None:
    """Set retention configs where they differ. ``alter_configs`` replaces a topic's whole
    dynamic config, so what else was set on it goes along unchanged."""
    described = await admin.describe_configs(
        [ConfigResource(ConfigResourceType.TOPIC, t) for t in wanted])
    changes = []
    for res in (r for resp in described for r in resp.resources):
        topic, entries = res[3], res[4]
        # (name, value, read_only, source or is_default, ...): source 1 is a topic override.
        current = {e[0]: e[1] for e in entries
                   if (not e[3] if isinstance(e[3], bool) else e[3] == 1)}
        if any(current.get(k) != v for k, v in wanted[topic].items()):
            changes.append(ConfigResource(ConfigResourceType.TOPIC, topic,
                                          {**current, **wanted[topic]}))
    if changes:
        for res in (r for resp in await admin.alter_configs(changes) for r in resp.resources):
            if res[0]:
                raise TransportError(f"cannot set the retention of Kafka topic {res[3]}: "
                                     f"{res[1] or f'error {res[0]}'}")
