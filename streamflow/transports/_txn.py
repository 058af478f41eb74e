"""Exactly-once plumbing shared by both transports: which transaction a publish joins, and a
seam called between a transaction's produce and its commit.

A consumer handles one input partition at a time inside ``Subscription.partition(n)``; while
that block runs, ``Transport.publish`` in the same task writes into partition n's open
transaction instead of straight to the log. ``Subscription.flush`` then commits every open
transaction together with the input offsets marked done.
"""

from __future__ import annotations

import contextvars
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from streamflow.model import Message, OutMessage


class TxnTarget(Protocol):
    """Where a publish inside ``Subscription.partition(n)`` goes."""

    async def add(self, transport: Any, messages: Sequence[OutMessage]) -> bool:
        """Take ``messages`` into the open transaction; False if this target does not belong
        to ``transport`` (publish then writes directly)."""
        ...


CURRENT: contextvars.ContextVar[TxnTarget | None] = contextvars.ContextVar(
    "streamflow_txn", default=None)


def last_offsets(messages: Sequence[Message]) -> dict[tuple[str, int], int]:
    """The next offset to read per (topic, partition): what a commit records."""
    last: dict[tuple[str, int], int] = {}
    for m in messages:
        tp = (m.topic, m.partition)
        if m.offset + 1 > last.get(tp, 0):
            last[tp] = m.offset + 1
    return last


BEFORE_COMMIT: list[Callable[[int], None]] = []
"""Called, in order, just before a consumer group's transaction commits (its outputs produced,
its input offsets added), with the number of records the transaction produced. Empty in normal
operation; observers and tests (``tests/faults.py`` crashes a worker here) may append to it.
A callback that raises aborts the transaction."""


def before_commit(produced: int) -> None:
    """Run the ``BEFORE_COMMIT`` callbacks (a plain list check when there are none)."""
    if BEFORE_COMMIT:
        for callback in tuple(BEFORE_COMMIT):
            callback(produced)
