"""Exactly-once plumbing shared by both transports: which transaction a publish joins, and the
fault hook the chaos suite uses to crash a worker between a produce and its commit.

A consumer handles one input partition at a time inside ``Subscription.partition(n)``; while
that block runs, ``Transport.publish`` in the same task writes into partition n's open
transaction instead of straight to the log. ``Subscription.flush`` then commits every open
transaction together with the input offsets marked done.
"""

from __future__ import annotations

import contextvars
import os
import signal
from collections.abc import Sequence
from typing import Any, Protocol

from ._protocol import Message, OutMessage


class TransactionFailed(RuntimeError):
    """A transaction could not commit (fenced by a newer owner, broker gone, timed out): its
    effects are discarded and the consumer must rewind to its last commit."""


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


class _CrashHook:
    """``STREAMFLOW_FAULT_CRASH_BEFORE_COMMIT=N``: SIGKILL this process at its Nth transaction
    commit, after the outputs were produced and before the commit, as a power cut would."""

    def __init__(self) -> None:
        raw = os.environ.get("STREAMFLOW_FAULT_CRASH_BEFORE_COMMIT", "")
        self.at = int(raw) if raw.strip().isdigit() else 0
        self.count = 0

    def before_commit(self, produced: int) -> None:
        if self.at <= 0 or produced == 0:
            return
        self.count += 1
        if self.count >= self.at:
            os.kill(os.getpid(), signal.SIGKILL)


crash_hook = _CrashHook()
