"""Claims on a compacted, retained topic: the SDK's ``Claims`` for every worker of a pipeline.

Each worker keeps the whole topic as a view (a tail that stays open). A key not in the view is
claimed by publishing it and reading the topic up to its end: the first live claim of a key
holds, and because one key always lands on one partition, every worker folds the claims of
that key in the same order and agrees on the first. A claim that lost the race publishes the
winner's again, so the compacted topic (which keeps the latest record per key) keeps the winner.
The view holds every live key (about 350 bytes each, measured) for the table's retention.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass

import orjson

from streamflow.model import Message, OutMessage, claims_topic
from streamflow.transports import TopicTail, Transport

log = logging.getLogger("streamflow.state")
PRUNE_EVERY_S = 60.0


@dataclass(frozen=True, slots=True)
class _Claim:
    value: str
    at_ms: int


class TopicClaims:
    """``ConnectorContext.claims`` for one pipeline: a table is a topic, opened on first use."""

    def __init__(self, transport: Transport, namespace: str, pipeline: str) -> None:
        self.transport, self.namespace, self.pipeline = transport, namespace, pipeline
        self._tables: dict[str, ClaimTopic] = {}

    async def table(self, name: str, retention_s: float) -> ClaimTopic:
        table = self._tables.get(name)
        if table is None:
            topic = claims_topic(self.namespace, self.pipeline, name)
            table = ClaimTopic(self.transport, topic, retention_s)
            await table.open()
            self._tables[name] = table
        return table

    async def close(self) -> None:
        for table in self._tables.values():
            await table.close()
        self._tables.clear()


class ClaimTopic:
    def __init__(self, transport: Transport, topic: str, retention_s: float) -> None:
        self.transport, self.topic = transport, topic
        self.retention_s, self.retention_ms = retention_s, int(retention_s * 1000)
        self.view: dict[str, _Claim] = {}
        self._tail: TopicTail | None = None
        self._lock = asyncio.Lock()
        self._started = self._synced = 0
        self._pruned = time.monotonic()

    async def open(self) -> None:
        await self.transport.ensure_topics(
            [], compacted=[self.topic], retained={self.topic: self.retention_s})
        self._tail = await self.transport.follow(self.topic)
        await self.sync()
        log.info("claims %s: %d live keys", self.topic, len(self.view))

    async def close(self) -> None:
        if self._tail is not None:
            tail, self._tail = self._tail, None
            await tail.close()

    async def claim(self, key: str, value: str) -> str:
        now = int(time.time() * 1000)
        held = self._live(key, now)
        if held is not None:
            return held.value
        await self.transport.publish([self._message(key, _Claim(value, now))])
        await self.sync()
        held = self._live(key, now) or _Claim(value, now)
        if held.value != value:  # lost a race: the winner's claim must stay the latest record
            await self.transport.publish([self._message(key, held)])
        return held.value

    async def sync(self) -> None:
        """Fold what was appended, by a read that starts after this call: concurrent callers
        share one read."""
        asked = self._started
        async with self._lock:
            if self._synced > asked:
                return
            if self._tail is None:
                raise RuntimeError(f"claims {self.topic}: used before open() or after close()")
            self._started += 1
            ticket = self._started
            for m in await self._tail.read_new():
                self._fold(m)
            self._synced = ticket
            if time.monotonic() - self._pruned > PRUNE_EVERY_S:
                self._prune()

    def _live(self, key: str, now_ms: int) -> _Claim | None:
        c = self.view.get(key)
        return c if c is not None and c.at_ms + self.retention_ms > now_ms else None

    def _fold(self, m: Message) -> None:
        key = (m.key or b"").decode()
        if not m.value:
            self.view.pop(key, None)
            return
        try:
            d = orjson.loads(m.value)
            c = _Claim(str(d["value"]), int(d["at"]))
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
            log.warning("claims %s: unreadable record at partition %d offset %d skipped",
                        self.topic, m.partition, m.offset)
            return
        old = self.view.get(key)
        if old is None or c.at_ms >= old.at_ms + self.retention_ms:
            self.view[key] = c

    def _prune(self) -> None:
        now = int(time.time() * 1000)
        self.view = {k: c for k, c in self.view.items() if c.at_ms + self.retention_ms > now}
        self._pruned = time.monotonic()

    def _message(self, key: str, c: _Claim) -> OutMessage:
        return OutMessage(self.topic, orjson.dumps({"value": c.value, "at": c.at_ms}),
                          key.encode())
