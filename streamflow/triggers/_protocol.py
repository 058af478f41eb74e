"""The one interface the engine drives every stateful trigger through (barriers, windows)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from pydantic import BaseModel

from streamflow.errors import StreamFlowError
from streamflow.model import Arrival, Asset, DeadlinePolicy, Message, OutMessage, PlannedRun

from ._store import TriggerStore


class Refused(StreamFlowError):
    """An arrival the trigger cannot take: it is dead-lettered with this reason."""


class Late(Refused):
    """An arrival for a window that has already closed, or older than a barrier's retention."""


class Full(Refused):
    """An arrival for a window that holds ``max_records`` already."""


def never_held(_partition: str, _key: str) -> bool:
    return False


class TriggerRuntime(Protocol):
    """Partition states of one stage's trigger, and the runs they plan.

    ``offer`` records an arrival and returns the runs it fires with the changelog messages
    to publish beside them; ``expired`` applies deadlines; ``replan`` rebuilds a retried or
    replayed run from its payload. ``held`` asks the stage's gate whether a key is held.
    """

    store: TriggerStore
    held: Callable[[str, str], bool]

    async def ensure_restored(self, partition: int) -> None: ...

    def offer(self, m: Message, arr: Arrival, asset: Asset[Any], record: BaseModel | None = None
              ) -> tuple[list[PlannedRun], list[OutMessage]]: ...

    def replan(self, payload: bytes, arr: Arrival) -> PlannedRun:
        """Raises ``Refused`` when the payload is no planned run (it is dead-lettered)."""
        ...

    def expired(self) -> list[tuple[PlannedRun, DeadlinePolicy, OutMessage]]: ...

    def any_expired(self) -> bool: ...

    def next_deadline_s(self) -> float | None: ...

    def deadline_reason(self, plan: PlannedRun) -> str: ...

    def alert_text(self, plan: PlannedRun, what: str) -> str: ...
