"""Test helpers that read what a pipeline wrote, through the same transport it used."""

from __future__ import annotations

import asyncio

import orjson

from streamflow import Settings
from streamflow._engine import make_transport
from streamflow.transports import Message


async def read_topic(settings: Settings, topic: str, timeout: float = 30.0) -> list[Message]:
    """Everything on ``topic`` (read_committed on Kafka), through the transport itself."""
    transport = make_transport(settings)
    await transport.start()
    try:
        await transport.ensure_topics([topic])
        return await asyncio.wait_for(transport.read_topic(topic), timeout)
    finally:
        await transport.close()


def values(msgs: list[Message]) -> list[dict[str, object]]:
    return [orjson.loads(m.value) for m in msgs]


class ListSource:
    """An in-memory source for engine tests: each inner list is one batch of raw records.

    Records with the same ``id`` get the same record id, as a re-read would.
    """

    location = "memory"

    def __init__(self, batches: list[list[dict[str, object]]]) -> None:
        self.batches = batches
        self.acked = 0

    async def setup(self, ctx: object) -> None:
        return None

    async def read(self):  # type: ignore[no-untyped-def]
        from streamflow.connectors import SourceBatch, SourceRecord

        for i, batch in enumerate(self.batches):
            yield SourceBatch(
                [SourceRecord(dict(r), {"batch": i}, f"rec-{r['id']}") for r in batch],
                position=str(i),
            )

    async def ack(self, batch: object) -> None:
        self.acked += 1

    async def stop(self) -> None:
        return None
