"""At-least-once Kafka subscription: offsets committed once the outputs are acknowledged."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Collection, Sequence
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import CommitFailedError, IllegalStateError

from streamflow.model import Message
from streamflow.transports._aio import stop_quietly
from streamflow.transports._txn import last_offsets

from ._client import KafkaClient

log = logging.getLogger("streamflow.transport")


class KafkaSubscription:
    """At least once: offsets are committed after the outputs are acknowledged."""

    exactly_once = False

    def __init__(self, client: KafkaClient, detach: Callable[[Any], None],
                 consumer: AIOKafkaConsumer, group: str, topics: list[str]) -> None:
        self.client, self._detach = client, detach
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
        return await self.client.poll(self.consumer, max_records, timeout, topics)

    async def commit(self, messages: Sequence[Message]) -> None:
        """Offsets of the partitions still assigned. Those of a partition a rebalance moved
        away meanwhile, or a commit the rebalance refused, are left uncommitted: the next owner
        reads them again (at least once), which is no reason to stop."""
        assigned = self.consumer.assignment()
        offsets = {TopicPartition(*tp): off for tp, off in last_offsets(messages).items()}
        moved = [tp for tp in offsets if tp not in assigned]
        for tp in moved:
            del offsets[tp]
        if moved:
            log.info("%s: not committing %s: no longer assigned", self.group, moved)
        if not offsets:
            return
        try:
            await self.consumer.commit(offsets)
        except (CommitFailedError, IllegalStateError) as e:
            log.warning("%s: commit refused by a rebalance (%s); the next owner reads those "
                        "records again", self.group, e)

    async def lag(self) -> int:
        lags = await self.lags()
        return sum(lags.values()) if lags else 1 << 30  # no metadata yet: not drained

    async def lags(self) -> dict[tuple[str, int], int]:
        return await self.client.lags(self.consumer, self.topics)

    async def close(self) -> None:
        if not self._closed:
            self._closed = True
            await stop_quietly(self.consumer)
            with contextlib.suppress(ValueError):  # the transport closes what it still holds
                self._detach(self)
