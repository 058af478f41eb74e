"""Exactly-once on Kafka: one transactional producer per input partition number.

aiokafka cannot send the consumer's group metadata with its offsets (KIP-447), so the broker
cannot fence a zombie by consumer generation. Fencing comes from the transactional id instead,
as Kafka Streams did before KIP-447: partition n of a consumer group is always written by the
transactional id ``<group>.<n>``. The worker that is assigned partition n initialises that id
*before* reading a record of it. Initialising bumps the id's epoch, which aborts whatever the
previous owner left open and fences it: any later produce or commit of the old owner fails.
Only then are the committed offsets read, so the new owner starts exactly after the last
committed transaction. Co-partitioned input topics move together (range assignor), so one id
covers partition n of every input topic of the group.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable, Collection, Sequence
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.structs import OffsetAndMetadata

from streamflow.errors import TransactionFailed
from streamflow.model import Message, OutMessage
from streamflow.transports._aio import stop_quietly
from streamflow.transports._protocol import AssignCallback
from streamflow.transports._txn import CURRENT, before_commit, last_offsets

from ._client import KafkaClient, Listener

log = logging.getLogger("streamflow.transport")

TRANSACTION_TIMEOUT_MS = 30_000
"""An open transaction whose owner vanished and whose partition is never reassigned is aborted
by the broker after this; until then read_committed readers of its outputs wait."""


class _PartitionTxn:
    """Partition n's producer and what its open transaction holds."""

    def __init__(self, producer: AIOKafkaProducer) -> None:
        self.producer = producer
        self.open = False
        self.produced = 0
        self.offsets: dict[tuple[str, int], int] = {}


class _Target:
    def __init__(self, sub: KafkaEosSubscription, partition: int) -> None:
        self.sub, self.partition = sub, partition

    async def add(self, transport: Any, messages: Sequence[OutMessage]) -> bool:
        if getattr(transport, "client", None) is not self.sub.client:
            return False
        txn = self.sub._txns.get(self.partition)
        if txn is None:
            raise TransactionFailed(
                f"partition {self.partition} of {self.sub.group} was revoked mid-transaction")
        try:
            if not txn.open:
                await txn.producer.begin_transaction()
                txn.open = True
            await self.sub.client.send(txn.producer, messages)
        except Exception as e:
            raise TransactionFailed(f"{self.sub.group} partition {self.partition}: "
                                    f"{type(e).__name__}: {e}") from e
        txn.produced += len(messages)
        return True


class KafkaEosSubscription:
    """A consumer-group member whose publishes and offset commits are one transaction per
    input partition."""

    exactly_once = True

    def __init__(self, client: KafkaClient, detach: Callable[[Any], None], group: str,
                 topics: list[str], on_assign: AssignCallback | None,
                 on_revoke: AssignCallback | None) -> None:
        self.client, self._detach, self.group, self.topics = client, detach, group, topics
        self._user_assign, self._user_revoke = on_assign, on_revoke
        self._txns: dict[int, _PartitionTxn] = {}
        self._committed: dict[tuple[str, int], int] = {}  # what this member last committed
        self._partial: set[int] = set()  # handled only a prefix of what was polled
        # Assignments are numbered: a poll that began before partition n was (re)assigned
        # returns records of n that must not be handled (see ``poll``).
        self._epoch = 0
        self._poll_epoch = 0
        self._since: dict[int, int] = {}
        self.lock = asyncio.Lock()
        self.consumer: AIOKafkaConsumer | None = None
        self._closed = False

    async def start(self) -> None:
        self.consumer = AIOKafkaConsumer(**self.client.consumer_config(self.group))
        await self.consumer.start()
        self.consumer.subscribe(self.topics, listener=Listener(
            self.topics[0], self._assigned, self._revoked))

    @property
    def assigned(self) -> set[int]:
        return set(self._txns)

    async def _assigned(self, partitions: set[int]) -> None:
        assert self.consumer is not None
        # Under the lock: the run loop handles partition n only once it is fenced and its
        # position set, never between the two.
        async with self.lock:
            new = sorted(partitions - set(self._txns))
            log.debug("%s: assigned %s (new: %s)", self.group, partitions, new)
            producers = await asyncio.gather(*(self._fence(n) for n in new))
            tps = [tp for tp in self.consumer.assignment() if tp.partition in new]
            if tps:  # read after fencing: the previous owner's last transaction is settled
                # Records of a partition polled before it was ours were skipped, not handled:
                # seek back explicitly, to the start when the group never committed there.
                fresh = []
                for tp, off in (await self.consumer.seek_to_committed(*tps)).items():
                    self._committed[(tp.topic, tp.partition)] = off or 0
                    if not off:
                        fresh.append(tp)
                if fresh:  # a synchronous seek: seek_to_beginning resets lazily, later
                    for tp, start in (await self.consumer.beginning_offsets(fresh)).items():
                        self.consumer.seek(tp, start)
            self._txns.update(zip(new, producers, strict=True))
            self._epoch += 1
            for n in new:
                self._since[n] = self._epoch
        if self._user_assign is not None:
            await self._user_assign(partitions)

    async def _fence(self, n: int) -> _PartitionTxn:
        producer = AIOKafkaProducer(**self.client.producer_config(
            transactional_id=f"{self.group}.{n}",
            transaction_timeout_ms=TRANSACTION_TIMEOUT_MS))
        await producer.start()
        # Beginning waits for InitProducerId, which bumps the epoch: the fence.
        await producer.begin_transaction()
        await producer.abort_transaction()
        return _PartitionTxn(producer)

    async def _revoked(self, partitions: set[int]) -> None:
        async with self.lock:
            gone = [n for n in partitions if n in self._txns]
            try:  # mid-batch, maybe: only what was marked done, not the read position
                await self._commit([n for n in gone if self._dirty(n)], at_position=False)
            except TransactionFailed as e:  # the new owner redoes what this one did not commit
                log.warning("%s: giving up partitions %s without their last commit: %s",
                            self.group, gone, e)
            for n in gone:
                await self._drop(n)
        if self._user_revoke is not None:
            await self._user_revoke(partitions)

    async def _drop(self, n: int) -> None:
        for tp in [tp for tp in self._committed if tp[1] == n]:
            del self._committed[tp]
        txn = self._txns.pop(n, None)
        if txn is not None:
            await stop_quietly(txn.producer)

    def _dirty(self, n: int) -> bool:
        txn = self._txns.get(n)
        return txn is not None and (txn.open or bool(txn.offsets))

    @contextlib.asynccontextmanager
    async def partition(self, n: int) -> AsyncIterator[bool]:
        """Handle partition n: publishes inside go into its transaction. Yields False when the
        partition was revoked since its records were polled (the new owner reads them)."""
        async with self.lock:
            if n not in self._txns:
                yield False
                return
            if self._since.get(n, 0) > self._poll_epoch:
                self._rewind_to_commit(n)
                yield False
                return
            token = CURRENT.set(_Target(self, n))
            try:
                yield True
            finally:
                CURRENT.reset(token)

    def _rewind_to_commit(self, n: int) -> None:
        """Partition n was assigned while the last poll waited: its records may predate the
        assignment's seek. Handling none of them is right only if the position goes back
        too (committing at the read position would skip them). Nothing of n was handled
        since its assignment, so its committed offsets are where to resume."""
        assert self.consumer is not None
        for tp in self.consumer.assignment():
            off = self._committed.get((tp.topic, tp.partition))
            if tp.partition == n and off is not None:
                log.debug("%s: records of %s polled across its assignment dropped; back to "
                          "%d", self.group, tp, off)
                self.consumer.seek(tp, off)

    def mark_done(self, messages: Sequence[Message], partial: bool = False) -> None:
        """Called inside ``partition(n)``: these inputs commit with n's transaction.
        ``partial``: the handler stopped short of what was polled."""
        for (topic, p), off in last_offsets(messages).items():
            txn = self._txns.get(p)
            if txn is not None:
                txn.offsets[(topic, p)] = off
            if partial:
                self._partial.add(p)

    def _position(self, tp: tuple[str, int]) -> int | None:
        """The consumer's read position: past the transaction markers that follow the last
        record returned, which the offsets of records alone never pass (a read_committed
        reader would show a lag of one marker forever)."""
        assert self.consumer is not None
        try:
            assignment = self.consumer._subscription.subscription.assignment
            state = assignment.state_value(TopicPartition(*tp))
            if state is None or not state.has_valid_position:
                return None  # a seek or reset is pending: nothing read past the commit
            pos = state.position
        except (AttributeError, KeyError, TypeError, AssertionError):
            return None
        return pos if isinstance(pos, int) else None

    def _ahead(self, n: int) -> dict[tuple[str, int], int]:
        """Owned topic-partitions of number n whose position moved past their commit."""
        if n in self._partial:
            return {}
        out = {}
        for tp, done in self._committed.items():
            if tp[1] == n:
                pos = self._position(tp)
                if pos is not None and pos > done:
                    out[tp] = pos
        return out

    def pending(self) -> bool:
        return any(self._dirty(n) or self._ahead(n) for n in self._txns)

    async def flush(self, at_position: bool = True) -> None:
        """Commit; ``at_position``: at the read position, when every record returned so far
        was handled (the run loop flushes between batches)."""
        async with self.lock:
            await self._commit([n for n in self._txns
                                if self._dirty(n) or (at_position and self._ahead(n))],
                               at_position)

    async def _commit(self, partitions: list[int], at_position: bool = True) -> None:
        results = await asyncio.gather(*(self._commit_one(n, at_position) for n in partitions),
                                       return_exceptions=True)
        failed = [r for r in results if isinstance(r, BaseException)]
        if failed:
            raise TransactionFailed("; ".join(str(f) for f in failed)) from failed[0]

    async def _commit_one(self, n: int, at_position: bool) -> None:
        txn = self._txns[n]
        offsets = dict(txn.offsets)
        if at_position:
            for tp, pos in self._ahead(n).items():
                offsets[tp] = max(pos, offsets.get(tp, 0))
        log.debug("%s: partition %d commits %d records with offsets %s", self.group, n,
                  txn.produced, offsets)
        try:
            if not txn.open:
                await txn.producer.begin_transaction()
                txn.open = True
            if offsets:
                await txn.producer.send_offsets_to_transaction(
                    {TopicPartition(t, p): OffsetAndMetadata(off, "")
                     for (t, p), off in offsets.items()}, self.group)
            before_commit(txn.produced)
            await txn.producer.commit_transaction()
            self._committed.update(offsets)
        except Exception as e:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(txn.producer.abort_transaction(), 5)
            raise TransactionFailed(
                f"{self.group} partition {n}: {type(e).__name__}: {e}") from e
        finally:
            txn.open, txn.produced = False, 0
            txn.offsets.clear()
            self._partial.discard(n)

    async def poll(self, max_records: int = 500, timeout: float = 0.5,
                   topics: Collection[str] | None = None, append: bool = False
                   ) -> list[Message]:
        assert self.consumer is not None
        if not append:  # what was assigned when this batch's first fetch started
            self._poll_epoch = self._epoch
        return await self.client.poll(self.consumer, max_records, timeout, topics)

    async def commit(self, messages: Sequence[Message]) -> None:
        """At-least-once callers: mark and commit in one go."""
        for n in {m.partition for m in messages}:
            async with self.partition(n) as owned:
                if owned:
                    self.mark_done([m for m in messages if m.partition == n])
        await self.flush()

    async def lag(self) -> int:
        lags = await self.lags()
        return sum(lags.values()) if lags else 1 << 30

    async def lags(self) -> dict[tuple[str, int], int]:
        assert self.consumer is not None
        return await self.client.lags(self.consumer, self.topics)

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        async with self.lock:
            for txn in self._txns.values():
                if txn.open:
                    with contextlib.suppress(Exception):
                        await asyncio.wait_for(txn.producer.abort_transaction(), 5)
            for n in list(self._txns):
                await self._drop(n)
        if self.consumer is not None:
            await stop_quietly(self.consumer)
        with contextlib.suppress(ValueError):  # the transport closes what it still holds
            self._detach(self)

