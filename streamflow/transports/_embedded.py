"""The embedded durable log: SQLite through aiosqlite, one process, zero setup.

One partition per topic. Publishers wake waiting subscribers in-process, so reaction time is
an event-loop hop, not a polling interval.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Collection, Mapping, Sequence
from pathlib import Path
from typing import Any

import aiosqlite

from streamflow.model import Message, OutMessage

from ._codec import dec_headers, enc_headers
from ._protocol import AssignCallback
from ._tail import EmbeddedTail
from ._txn import CURRENT, before_commit, last_offsets

log = logging.getLogger("streamflow.transport")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS log(
  topic TEXT NOT NULL, off INTEGER NOT NULL, key BLOB, value BLOB NOT NULL,
  headers BLOB NOT NULL, ts INTEGER NOT NULL, PRIMARY KEY(topic, off)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS group_offsets(
  grp TEXT NOT NULL, topic TEXT NOT NULL, off INTEGER NOT NULL, PRIMARY KEY(grp, topic));
CREATE TABLE IF NOT EXISTS compacted(topic TEXT PRIMARY KEY);
CREATE TABLE IF NOT EXISTS retained(topic TEXT PRIMARY KEY, ms INTEGER NOT NULL);
"""
COMPACT_EVERY = 20_000
"""Rows appended to compacted topics between two compactions (and at least a minute apart):
often enough that a restore reads little more than the live keys, rarely enough that the
delete (which holds the write lock) stays off the hot path."""
SCAN_PAGE = 5000
"""Records per chunk of ``scan_topic``."""
TOMBSTONE_RETENTION_MS = 86_400_000
"""As Kafka's ``delete.retention.ms``: a tombstone stays this long, so a reader that was
restoring meanwhile still sees the key go."""


class EmbeddedTransport:
    name = "embedded"
    messaging_system = "streamflow-embedded"
    synchronous = "FULL"
    """Every commit is on disk before it returns, so what a source acks after its publish
    (the files source moving a file to ``processed/``) survives a power cut. ``NORMAL`` would
    sync only at WAL checkpoints; ``python -m bench embedded`` measures the two side by side."""

    def __init__(self, path: Path, exactly_once: bool = False) -> None:
        self.path = path
        self.exactly_once = exactly_once
        self._db: aiosqlite.Connection | None = None
        self._next: dict[str, int] = {}
        self._changed = asyncio.Condition()
        self._lock = asyncio.Lock()
        self._compacted: set[str] = set()
        self._retained: dict[str, int] = {}  # topic: retention in ms
        self._dirty = 0  # rows appended to compacted topics since the last compaction
        self._compacted_at = 0.0
        self._compacting: asyncio.Task[int] | None = None

    @property
    def db(self) -> aiosqlite.Connection:
        if self._db is None:
            raise RuntimeError("embedded transport used before start()")
        return self._db

    async def start(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # Another process may be writing the same log (a backfill CLI beside its worker): wait
        # for its locks, and switch to WAL only once (asking again needs a lock of its own).
        self._db = await aiosqlite.connect(self.path, timeout=30.0)
        [(mode,)] = list(await self._db.execute_fetchall("PRAGMA journal_mode"))
        if str(mode).lower() != "wal":
            await self._db.execute("PRAGMA journal_mode=WAL")
        await self._db.execute(f"PRAGMA synchronous={self.synchronous}")
        await self._db.executescript(_SCHEMA)
        await self._db.commit()
        for topic, off in await self._db.execute_fetchall(
                "SELECT topic, MAX(off) FROM log GROUP BY topic"):
            self._next[topic] = int(off) + 1
        self._compacted = {t for (t,) in await self._db.execute_fetchall(
            "SELECT topic FROM compacted")}
        self._retained = {t: int(ms) for t, ms in await self._db.execute_fetchall(
            "SELECT topic, ms FROM retained")}
        self._compacted_at = time.monotonic()

    async def close(self) -> None:
        if self._compacting is not None:
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await self._compacting
        if self._db is not None:
            await self._db.close()
            self._db = None

    async def ensure_topics(self, topics: Sequence[str], compacted: Sequence[str] = (),
                            partitions: Mapping[str, int] | None = None,
                            retained: Mapping[str, float] | None = None) -> None:
        keep = {t: max(1000, int(s * 1000)) for t, s in (retained or {}).items()}
        for t in [*topics, *compacted, *keep]:
            self._next.setdefault(t, 0)
        new = [t for t in compacted if t not in self._compacted]
        changed = {t: ms for t, ms in keep.items() if self._retained.get(t) != ms}
        if new or changed:
            async with self._lock:  # not inside a compaction's transaction
                await self.db.executemany("INSERT OR IGNORE INTO compacted VALUES (?)",
                                          [(t,) for t in new])
                await self.db.executemany("INSERT OR REPLACE INTO retained VALUES (?, ?)",
                                          list(changed.items()))
                await self.db.commit()
            self._compacted.update(new)
            self._retained.update(changed)

    async def compact(self) -> int:
        """Compacted topics keep only the latest record per key, as Kafka's cleaner would;
        a tombstone goes once it is older than ``TOMBSTONE_RETENTION_MS``. Offsets are kept
        (a consumer's position stays valid) and so is each topic's last record (it fixes the
        next offset). Records of retained topics go once older than their retention. Returns
        how many records went."""
        gone = 0
        now = int(time.time() * 1000)
        cutoff = now - TOMBSTONE_RETENTION_MS
        async with self._lock:
            try:
                await self.db.execute("BEGIN IMMEDIATE")
                for topic, ms in sorted(self._retained.items()):
                    cur = await self.db.execute(
                        "DELETE FROM log WHERE topic=? AND ts<? AND "
                        "off<(SELECT MAX(off) FROM log WHERE topic=?)", (topic, now - ms, topic))
                    gone += max(0, cur.rowcount)
                for topic in sorted(self._compacted):
                    cur = await self.db.execute(
                        "DELETE FROM log WHERE topic=? AND off NOT IN "
                        "(SELECT MAX(off) FROM log WHERE topic=? GROUP BY key)", (topic, topic))
                    gone += max(0, cur.rowcount)
                    cur = await self.db.execute(
                        "DELETE FROM log WHERE topic=? AND value=x'' AND ts<? AND "
                        "off<(SELECT MAX(off) FROM log WHERE topic=?)", (topic, cutoff, topic))
                    gone += max(0, cur.rowcount)
                await self.db.commit()
            except BaseException:
                await self.db.rollback()
                raise
            self._dirty = 0
            self._compacted_at = time.monotonic()
        return gone

    def _maybe_compact(self, appended: int) -> None:
        self._dirty += appended
        if (self._dirty >= COMPACT_EVERY and time.monotonic() - self._compacted_at >= 60
                and (self._compacting is None or self._compacting.done())):
            self._compacting = asyncio.ensure_future(self.compact())
            self._compacting.add_done_callback(_report)

    async def publish(self, messages: Sequence[OutMessage]) -> None:
        if not messages:
            return
        txn = CURRENT.get()
        if txn is not None and await txn.add(self, messages):
            return
        await self._write(messages, None, [])

    async def publish_nowait(self, messages: Sequence[OutMessage]) -> Awaitable[object] | None:
        await self.publish(messages)  # one SQLite commit: nothing to overlap
        return None

    async def _write(self, messages: Sequence[OutMessage], group: str | None,
                     offsets: list[tuple[str, int]]) -> None:
        """Append ``messages`` and commit ``group``'s ``offsets`` in one SQLite transaction."""
        try:
            await self._append(messages, group, offsets)
        except sqlite3.IntegrityError:
            # Another process (the backfill or dlq CLI beside a worker) appended to one of
            # these topics: take its offsets into account and write again.
            await self._refresh(*{m.topic for m in messages})
            await self._append(messages, group, offsets)

    async def _append(self, messages: Sequence[OutMessage], group: str | None,
                      offsets: list[tuple[str, int]]) -> None:
        now = int(time.time() * 1000)
        async with self._lock:
            nxt = dict(self._next)
            rows = []
            for m in messages:
                off = nxt.get(m.topic, 0)
                nxt[m.topic] = off + 1
                rows.append((m.topic, off, m.key, m.value, enc_headers(m.headers), now))
            try:
                # The write lock first, waiting for another process's write if need be: a
                # deferred transaction that has read cannot wait for it and fails as busy.
                await self.db.execute("BEGIN IMMEDIATE")
                if rows:
                    await self.db.executemany("INSERT INTO log VALUES (?,?,?,?,?,?)", rows)
                if group is not None and offsets:
                    await self.db.executemany(
                        "INSERT INTO group_offsets VALUES (?,?,?) ON CONFLICT(grp, topic) "
                        "DO UPDATE SET off=MAX(off, excluded.off)",
                        [(group, t, off) for t, off in offsets])
                if group is not None:
                    before_commit(len(rows))
                await self.db.commit()
            except BaseException:
                await self.db.rollback()
                raise
            # Offsets become visible only once the rows are durable.
            self._next = nxt
        if self._compacted or self._retained:
            self._maybe_compact(sum(1 for m in messages
                                    if m.topic in self._compacted or m.topic in self._retained))
        if rows:
            async with self._changed:
                self._changed.notify_all()

    async def subscribe(
        self, group: str, topics: Sequence[str], on_assign: AssignCallback | None = None,
        on_revoke: AssignCallback | None = None,
    ) -> EmbeddedSubscription:
        positions: dict[str, int] = {t: 0 for t in topics}
        for topic, off in await self.db.execute_fetchall(
                f"SELECT topic, off FROM group_offsets WHERE grp=? AND topic IN "
                f"({','.join('?' * len(topics))})", (group, *topics)):
            positions[topic] = int(off)
        if on_assign is not None:
            await on_assign({0})  # one process owns the only partition
        return EmbeddedSubscription(self, group, positions, self.exactly_once)

    async def partition_count(self, topic: str) -> int:
        return 1

    async def read_topic(self, topic: str, partitions: Collection[int] | None = None,
                         since_ms: int | None = None) -> list[Message]:
        return [m async for chunk in self.scan_topic(topic, partitions, since_ms) for m in chunk]

    async def scan_topic(self, topic: str, partitions: Collection[int] | None = None,
                         since_ms: int | None = None,
                         from_offsets: Mapping[int, int] | None = None,
                         ) -> AsyncGenerator[list[Message], None]:
        if partitions is not None and 0 not in partitions:
            return
        after = (from_offsets or {}).get(0, 0) - 1
        end = await self.end_offset(topic)  # what is there now, as on Kafka
        while True:
            # A page per statement, each fetched whole: a statement left open across awaits
            # holds a read snapshot that makes this connection's next write fail as busy when
            # another process (the backfill CLI) wrote meanwhile.
            rows = await self.db.execute_fetchall(
                "SELECT off, key, value, headers, ts FROM log WHERE topic=? AND off>? AND off<? "
                "AND ts>=? ORDER BY off LIMIT ?", (topic, after, end, since_ms or 0, SCAN_PAGE))
            if not rows:
                return
            yield [Message(topic, 0, off, key, value, dec_headers(headers), ts)
                   for off, key, value, headers, ts in rows]
            after = int(list(rows)[-1][0])

    async def follow(self, topic: str) -> EmbeddedTail:
        return EmbeddedTail(self, topic)

    async def end_offset(self, topic: str) -> int:
        await self._refresh(topic)
        return self._next.get(topic, 0)

    async def end_offsets(self, topic: str) -> dict[int, int]:
        return {0: await self.end_offset(topic)}

    async def committed(self, group: str, topic: str) -> dict[int, int]:
        rows = list(await self.db.execute_fetchall(
            "SELECT off FROM group_offsets WHERE grp=? AND topic=?", (group, topic)))
        return {0: int(rows[0][0]) if rows else 0}

    async def _refresh(self, *topics: str) -> None:
        """Another process (the backfill CLI beside a worker) may have appended."""
        for topic, off in await self.db.execute_fetchall(
                f"SELECT topic, MAX(off) FROM log WHERE topic IN "
                f"({','.join('?' * len(topics))}) GROUP BY topic", topics):
            self._next[topic] = max(self._next.get(topic, 0), int(off) + 1)


def _report(task: asyncio.Task[int]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.warning("embedded log: compaction failed (tried again later): %s", task.exception())


class _Buffer:
    """The open transaction of an exactly-once embedded subscription: held in memory until
    ``flush`` writes it with the offsets in one SQLite transaction."""

    def __init__(self, sub: EmbeddedSubscription) -> None:
        self.sub = sub

    async def add(self, transport: Any, messages: Sequence[OutMessage]) -> bool:
        if transport is not self.sub.t:
            return False
        self.sub._out.extend(messages)
        return True


class EmbeddedSubscription:
    assigned = frozenset({0})

    def __init__(self, transport: EmbeddedTransport, group: str, positions: dict[str, int],
                 exactly_once: bool = False) -> None:
        self.t = transport
        self.group = group
        self.exactly_once = exactly_once
        self._pos = positions  # next offset to read, per topic
        self._closed = False
        self._out: list[OutMessage] = []
        self._done: dict[str, int] = {}
        self._refreshed = 0.0
        self.lock = asyncio.Lock()

    @contextlib.asynccontextmanager
    async def partition(self, n: int) -> AsyncIterator[bool]:
        async with self.lock:
            token = CURRENT.set(_Buffer(self))
            try:
                yield True
            finally:
                CURRENT.reset(token)

    def mark_done(self, messages: Sequence[Message], partial: bool = False) -> None:
        for (topic, _), off in last_offsets(messages).items():
            self._done[topic] = max(self._done.get(topic, 0), off)

    def pending(self) -> bool:
        return bool(self._out or self._done)

    async def flush(self, at_position: bool = True) -> None:
        async with self.lock:
            out, done = self._out, self._done
            self._out, self._done = [], {}
            await self.t._write(out, self.group, list(done.items()))

    def _pending(self, topics: Collection[str] | None = None) -> bool:
        return any(self.t._next.get(t, 0) > p for t, p in self._pos.items()
                   if topics is None or t in topics)

    async def poll(self, max_records: int = 500, timeout: float = 0.5,
                   topics: Collection[str] | None = None, append: bool = False
                   ) -> list[Message]:
        if not self._pending(topics):
            try:
                async with self.t._changed:
                    await asyncio.wait_for(
                        self.t._changed.wait_for(lambda: self._pending(topics)), timeout)
            except TimeoutError:
                # Nothing from this process: another one (the backfill CLI) may have written;
                # looked at a few times a second, not on every busy poll.
                now = time.monotonic()
                if now - self._refreshed < 0.2:
                    return []
                self._refreshed = now
                await self.t._refresh(*self._pos)
                if not self._pending(topics):
                    return []
        out: list[Message] = []
        for topic, pos in self._pos.items():
            if topics is not None and topic not in topics:
                continue
            if len(out) >= max_records or self.t._next.get(topic, 0) <= pos:
                continue
            for off, key, value, headers, ts in await self.t.db.execute_fetchall(
                    "SELECT off, key, value, headers, ts FROM log WHERE topic=? AND off>=? "
                    "ORDER BY off LIMIT ?", (topic, pos, max_records - len(out))):
                out.append(Message(topic, 0, off, key, value, dec_headers(headers), ts))
            if out and out[-1].topic == topic:
                self._pos[topic] = out[-1].offset + 1
        return out

    async def commit(self, messages: Sequence[Message]) -> None:
        """At least once, the outputs are published already: this writes the offsets (with
        whatever an exactly-once caller left buffered) in one SQLite transaction."""
        self.mark_done(messages)
        await self.flush()

    async def lag(self) -> int:
        return sum((await self.lags()).values())

    async def lags(self) -> dict[tuple[str, int], int]:
        committed = {topic: int(off) for topic, off in await self.t.db.execute_fetchall(
            "SELECT topic, off FROM group_offsets WHERE grp=?", (self.group,))}
        return {(topic, 0): max(0, self.t._next.get(topic, 0) - committed.get(topic, 0))
                for topic in self._pos}

    async def close(self) -> None:
        self._closed = True
