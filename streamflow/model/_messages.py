"""What travels on a log: a message as polled and a message to publish.

Values, not I/O: the model builds them, and every transport reads and writes them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

Headers = list[tuple[str, bytes]]


@dataclass(slots=True)
class OutMessage:
    topic: str
    value: bytes
    key: bytes | None = None
    headers: Headers = field(default_factory=list)
    partition_key: bytes | None = None
    """Co-partitioning: messages with the same partition key land on the same partition number
    of every topic (with equal partition counts), so one worker sees all of a barrier's inputs."""
    partition: int | None = None
    """An explicit partition number (a changelog follows its input partition)."""


@dataclass(slots=True)
class Message:
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes
    headers: Headers
    timestamp_ms: int
