"""``Transport.follow`` on the embedded log: the last offset read, kept between reads."""

from __future__ import annotations

from collections.abc import AsyncGenerator, Collection, Mapping
from typing import Protocol

from streamflow.model import Message


class _Scans(Protocol):
    def scan_topic(self, topic: str, partitions: Collection[int] | None = None,
                   since_ms: int | None = None, from_offsets: Mapping[int, int] | None = None,
                   ) -> AsyncGenerator[list[Message], None]: ...


class EmbeddedTail:
    def __init__(self, log: _Scans, topic: str) -> None:
        self.log, self.topic, self.after = log, topic, -1

    async def read_new(self) -> list[Message]:
        since = {0: self.after + 1}
        out = [m async for chunk in self.log.scan_topic(self.topic, from_offsets=since)
               for m in chunk]
        if out:
            self.after = out[-1].offset
        return out

    async def close(self) -> None:
        """Nothing held open: each read is its own statement."""
