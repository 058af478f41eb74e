"""The transport seam: the log underneath the engine, Kafka or embedded SQLite, same semantics."""

from __future__ import annotations

from collections.abc import AsyncGenerator, Awaitable, Callable, Collection, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from typing import Protocol

from streamflow.model import Message, OutMessage

AssignCallback = Callable[[set[int]], Awaitable[None]]


class Subscription(Protocol):
    """A consumer-group member: poll, handle, commit; redelivery after a crash is at-least-once."""

    group: str
    exactly_once: bool
    """True: this is a ``TransactionalSubscription``."""

    @property
    def assigned(self) -> Collection[int]:
        """The partition numbers this member owns now."""
        ...

    async def poll(self, max_records: int = 500, timeout: float = 0.5,
                   topics: Collection[str] | None = None, append: bool = False
                   ) -> list[Message]:
        """Up to ``max_records`` polled records; ``topics``: only from these (a backfill lane
        is read apart from the live input, so live records never queue behind it).
        ``append``: handled together with the previous poll's records, as one batch (exactly
        once judges the batch by the assignment when its first poll started)."""
        ...

    async def commit(self, messages: Sequence[Message]) -> None:
        """Mark everything up to and including these messages as done for the group."""
        ...

    async def lag(self) -> int:
        """Records on the subscribed topics the group has not committed yet."""
        ...

    async def lags(self) -> dict[tuple[str, int], int]:
        """``lag`` per (topic, partition), for metrics."""
        ...

    async def close(self) -> None: ...


class TransactionalSubscription(Subscription, Protocol):
    """Exactly once: what is published while handling partition n, and n's input offsets,
    become visible together at ``flush``, or not at all."""

    def partition(self, n: int) -> AbstractAsyncContextManager[bool]:
        """Handle partition n's records inside: publishes join its transaction. Yields False
        if n was revoked meanwhile (skip its records: the new owner reads them)."""
        ...

    def mark_done(self, messages: Sequence[Message], partial: bool = False) -> None:
        """Inside ``partition(n)``: these inputs are consumed by n's transaction. ``partial``:
        the handler stopped before the end of what was polled."""
        ...

    def pending(self) -> bool:
        """Something is waiting in an open transaction."""
        ...

    async def flush(self, at_position: bool = True) -> None:
        """Commit every open transaction (``at_position``: at the read position, when every
        record polled so far was handled); raises ``TransactionFailed`` when one is lost (the
        caller rewinds to the last commit)."""
        ...


class TopicTail(Protocol):
    """A reader of a whole topic, outside any group, that keeps its position between reads."""

    async def read_new(self) -> list[Message]:
        """What was committed since the last call (the first: since the start), up to the end
        as of this call: after ``publish`` returned, the next call includes those messages."""
        ...

    async def close(self) -> None: ...


class Transport(Protocol):
    name: str
    messaging_system: str

    async def start(self) -> None: ...

    async def close(self) -> None: ...

    async def ensure_topics(self, topics: Sequence[str], compacted: Sequence[str] = (),
                            partitions: Mapping[str, int] | None = None,
                            retained: Mapping[str, float] | None = None) -> None:
        """Create missing topics; those in ``compacted`` keep the latest record per key forever
        (ledgers) instead of expiring by age. ``partitions``: counts other than the default
        (a backfill lane gets its live topic's). ``retained``: topics whose records go after
        so many seconds, applied to existing topics too (the ledger's succeeded runs); one in
        both keeps the latest record per key for that long (idempotency claims)."""
        ...

    async def publish(self, messages: Sequence[OutMessage]) -> None:
        """Return only once every message is durable (acks=all on Kafka, committed on SQLite)."""
        ...

    async def publish_nowait(self, messages: Sequence[OutMessage]) -> Awaitable[object] | None:
        """Hand ``messages`` over; return what to await for them to be durable (None: they
        already are). Inside an exactly-once transaction, as ``publish``."""
        ...

    async def subscribe(
        self, group: str, topics: Sequence[str], on_assign: AssignCallback | None = None,
        on_revoke: AssignCallback | None = None,
    ) -> Subscription:
        """Join ``group``. ``on_assign``/``on_revoke`` get the partition numbers gained or lost
        (of the first topic; co-partitioned topics move together), before records flow."""
        ...

    async def partition_count(self, topic: str) -> int: ...

    async def end_offsets(self, topic: str) -> dict[int, int]:
        """The next offset per partition: how far a group must commit to have read it all."""
        ...

    async def committed(self, group: str, topic: str) -> dict[int, int]:
        """``group``'s committed offsets on ``topic`` (partitions it never committed: 0)."""
        ...

    def scan_topic(self, topic: str, partitions: Collection[int] | None = None,
                   since_ms: int | None = None, from_offsets: Mapping[int, int] | None = None,
                   ) -> AsyncGenerator[list[Message], None]:
        """What ``read_topic`` returns, in chunks of a few thousand records in log order per
        partition: a fold (a restore, the ledger) never holds a whole topic's messages.
        ``from_offsets``: partitions read from these offsets on (a checkpoint's tail)."""
        ...

    async def follow(self, topic: str) -> TopicTail:
        """Start reading all of ``topic`` from its beginning, position kept between reads:
        a view of a small shared topic that every worker keeps whole (claims)."""
        ...

    async def read_topic(self, topic: str, partitions: Collection[int] | None = None,
                         since_ms: int | None = None) -> list[Message]:
        """Everything on ``topic`` now (committed data only), without joining a group: for
        ledgers and tools that fold a whole topic. ``since_ms``: only records appended since
        then (a start-up that needs the recent ledger only)."""
        ...
