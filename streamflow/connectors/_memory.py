"""In-memory sources and sinks for tests and benchmarks (``streamflow.connectors.testing``).

A pipeline takes them as instances (``p.source(MemorySource(...), asset=...)``), so they need no
entry point.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncGenerator, Callable, Iterable, Sequence
from typing import Any

import orjson

from ._api import ConnectorContext, SinkRecord, SourceBatch, SourceRecord

RecordId = Callable[[dict[str, Any]], str]


def content_id(data: dict[str, Any]) -> str:
    """A record id from the record's content: the same record read again gets the same id."""
    body = orjson.dumps(data, option=orjson.OPT_SORT_KEYS, default=str)
    return "mem-" + hashlib.blake2b(body, digest_size=8).hexdigest()


class MemorySource:
    """A finite source of records held in memory: each inner sequence is one batch.

    Record ids come from ``record_id`` (default: a hash of the record's content), so a record
    read again dedupes downstream. Batch ``i`` has position ``str(i)``. Positions are kept in
    ``acked``; pass the same set to a later instance and it resumes after them, as a source
    with a durable position would (the connector kit checks that). Without one, every instance
    reads everything again, as an upstream that replays.
    """

    location = "memory"

    def __init__(self, batches: Iterable[Sequence[dict[str, Any]]], *,
                 record_id: RecordId = content_id, acked: set[str] | None = None) -> None:
        self.batches = [list(b) for b in batches]
        self.record_id = record_id
        self.acked_positions = acked if acked is not None else set()
        self.acked = 0
        """How many batches this instance acknowledged."""

    async def setup(self, ctx: ConnectorContext) -> None:
        return None

    async def read(self) -> AsyncGenerator[SourceBatch, None]:
        for i, batch in enumerate(self.batches):
            if str(i) in self.acked_positions:
                continue
            yield SourceBatch(
                [SourceRecord(dict(r), {"batch": i, "index": n}, self.record_id(r))
                 for n, r in enumerate(batch)],
                position=str(i),
            )

    async def ack(self, batch: SourceBatch) -> None:
        self.acked += 1
        self.acked_positions.add(batch.position)

    async def stop(self) -> None:
        return None


class IdleSource:
    """A source that publishes nothing and ends only when the worker stops: for pipelines whose
    arrivals a test or benchmark publishes itself, with the worker kept running."""

    location = "idle"

    async def setup(self, ctx: ConnectorContext) -> None:
        return None

    async def read(self) -> AsyncGenerator[SourceBatch, None]:
        await asyncio.Event().wait()
        yield SourceBatch([])  # never reached: the wait ends only by cancellation

    async def ack(self, batch: SourceBatch) -> None:
        return None

    async def stop(self) -> None:
        return None


class MemorySink:
    """A sink that keeps rows in a dict, upserted by record key (else arrival id) at flush.

    ``rows`` maps that key to the record's value plus ``_key``, ``_arrival_id`` and
    ``_partition``; pass your own dict to share it between instances (across restarts).
    With ``by_partition`` the dict key is ``"<partition>/<key>"``: a key is unique only within
    its partition, as in a sink that writes one file or table partition per asset partition.
    ``written`` lists every record of every flush, redeliveries included.
    """

    location = "memory"

    def __init__(self, rows: dict[str, dict[str, Any]] | None = None, *,
                 by_partition: bool = False) -> None:
        self.rows: dict[str, dict[str, Any]] = rows if rows is not None else {}
        self.by_partition = by_partition
        self.written: list[SinkRecord] = []
        self.flushes = 0
        self._pending: list[SinkRecord] = []

    async def setup(self, ctx: ConnectorContext) -> None:
        return None

    async def write(self, records: Sequence[SinkRecord]) -> None:
        self._pending.extend(records)

    async def flush(self) -> None:
        pending, self._pending = self._pending, []
        for r in pending:
            key = r.key or r.arrival_id
            self.rows[f"{r.partition}/{key}" if self.by_partition else key] = {
                **r.value, "_key": r.key, "_arrival_id": r.arrival_id, "_partition": r.partition}
        self.written.extend(pending)
        self.flushes += 1

    async def stop(self) -> None:
        await self.flush()

    def values(self) -> list[dict[str, Any]]:
        """The stored values without the metadata fields, in insertion order."""
        meta = ("_key", "_arrival_id", "_partition")
        return [{k: v for k, v in row.items() if k not in meta} for row in self.rows.values()]
