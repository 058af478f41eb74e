"""``fortune``: a deterministic finite source of canned quotes, and a keyed JSON-file sink."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import orjson
from pydantic import BaseModel, ConfigDict, Field

from streamflow.connectors import (
    ConnectorContext,
    ConnectorSpec,
    SinkRecord,
    SourceBatch,
    SourceRecord,
    write_atomic,
)

QUOTES = [
    ("Heraclitus", "No man ever steps in the same river twice."),
    ("Lao Tzu", "A journey of a thousand miles begins with a single step."),
    ("Seneca", "Luck is what happens when preparation meets opportunity."),
    ("Marcus Aurelius", "The impediment to action advances action."),
    ("Epictetus", "First say to yourself what you would be; then do what you have to do."),
]


class FortuneSourceConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    count: int = Field(10, ge=0, description="how many quotes to yield in all")
    batch: int = Field(4, ge=1, description="quotes per batch (one ack each)")


class FortuneSource:
    """Quote ``n`` is always the same, so its record id ``fortune:<n>`` is deterministic."""

    def __init__(self, config: FortuneSourceConfig) -> None:
        self.cfg = config
        self.done = 0
        self.state: Path | None = None

    async def setup(self, ctx: ConnectorContext) -> None:
        self.state = Path(ctx.state_dir) / f"fortune-{ctx.name}.json"
        if self.state.exists():
            self.done = int(orjson.loads(self.state.read_bytes())["done"])

    async def read(self) -> AsyncIterator[SourceBatch]:
        for start in range(self.done, self.cfg.count, self.cfg.batch):
            stop = min(start + self.cfg.batch, self.cfg.count)
            records = []
            for n in range(start, stop):
                author, quote = QUOTES[n % len(QUOTES)]
                records.append(SourceRecord({"n": n, "author": author, "quote": quote},
                                            {"fortune": n}, f"fortune:{n}"))
            yield SourceBatch(records, position=str(stop))

    async def ack(self, batch: SourceBatch) -> None:
        self.done = int(batch.position)
        if self.state is not None:
            self.state.parent.mkdir(parents=True, exist_ok=True)
            body = orjson.dumps({"done": self.done})
            await asyncio.to_thread(write_atomic, self.state, body)

    async def stop(self) -> None:
        return None


class FortuneSinkConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    path: Path = Field(description="JSON file holding one object per record key")


class FortuneSink:
    """Keeps ``{key: value}`` in one JSON file, rewritten atomically at each flush."""

    def __init__(self, config: FortuneSinkConfig) -> None:
        self.cfg = config
        self.location = str(config.path)
        self.rows: dict[str, Any] = {}

    async def setup(self, ctx: ConnectorContext) -> None:
        if not self.cfg.path.parent.is_dir():
            raise NotADirectoryError(f"fortune sink: {self.cfg.path.parent} is not a directory")
        if self.cfg.path.exists():
            self.rows = orjson.loads(self.cfg.path.read_bytes())

    async def write(self, records: Sequence[SinkRecord]) -> None:
        for r in records:
            self.rows[r.key or r.arrival_id] = r.value

    async def flush(self) -> None:
        body = orjson.dumps(self.rows, option=orjson.OPT_SORT_KEYS)
        await asyncio.to_thread(write_atomic, self.cfg.path, body)

    async def stop(self) -> None:
        return None


FORTUNE = ConnectorSpec(
    name="fortune",
    source=FortuneSource,
    sink=FortuneSink,
    source_config=FortuneSourceConfig,
    sink_config=FortuneSinkConfig,
)
