"""The ``stdout`` sink: one JSON document per record on standard output, for demos and pipes.

Standard output cannot take a record back, so this sink is at-least-once: a redelivered record
is printed again. Use it to look at a pipeline, or to pipe into ``jq``, not as a system of record.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Sequence
from typing import TextIO

import orjson
from pydantic import BaseModel, ConfigDict, Field

from streamflow.connectors import ConnectorContext, ConnectorSpec, SinkRecord


class StdoutSinkConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    pretty: bool = Field(False, description="indent each record over several lines")
    include_metadata: bool = Field(
        False, description="add _key, _arrival_id and _partition to each printed record")


class StdoutSink:
    """Buffers a batch's lines in write() and prints them together in flush()."""

    location = "stdout"

    def __init__(self, config: StdoutSinkConfig) -> None:
        self.cfg = config
        self._option = orjson.OPT_INDENT_2 if config.pretty else 0
        self._lines: list[str] = []

    async def setup(self, ctx: ConnectorContext) -> None:
        return None

    async def write(self, records: Sequence[SinkRecord]) -> None:
        for r in records:
            value = r.value
            if self.cfg.include_metadata:
                value = {**value, "_key": r.key, "_arrival_id": r.arrival_id,
                         "_partition": r.partition}
            self._lines.append(orjson.dumps(value, option=self._option).decode() + "\n")

    async def flush(self) -> None:
        if not self._lines:
            return
        text, self._lines = "".join(self._lines), []
        out = sys.stdout  # looked up now, so redirection (and pytest's capsys) is honoured
        await asyncio.to_thread(_emit, out, text)  # a slow reader must not stall the loop

    async def stop(self) -> None:
        await self.flush()


def _emit(out: TextIO, text: str) -> None:
    out.write(text)
    out.flush()


STDOUT = ConnectorSpec(name="stdout", sink=StdoutSink, sink_config=StdoutSinkConfig)

__all__ = ["STDOUT", "StdoutSink", "StdoutSinkConfig"]
