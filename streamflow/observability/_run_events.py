"""The interface the engine emits run lifecycle events through, and how one is made.

The OpenLineage client is slow to import, so it is imported only when the ``lineage``
setting names a target: the engine depends on this Protocol, never on the client.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from streamflow.model import Mode, RunStatus


class RunEvents(Protocol):
    """START, then COMPLETE or FAIL, for every run attempt (see :mod:`._lineage`)."""

    def started(self, *, stage: str, run_id: str, partition: str, attempt: int, mode: Mode,
                backfill: str, inputs: Sequence[str], output: str | None,
                at_ms: int) -> None: ...

    def ended(self, *, stage: str, run_id: str, partition: str, attempt: int, mode: Mode,
              backfill: str, inputs: Sequence[str], output: str | None, at_ms: int,
              status: RunStatus, error: str | None) -> None: ...

    def close(self, timeout: float = 5.0) -> None: ...


def run_events(target: str | None, namespace: str, pipeline: str) -> RunEvents | None:
    """Run events for the ``lineage`` setting (``STREAMFLOW_LINEAGE``); None when unset."""
    if target is None or not target.strip():
        return None
    # Deferred: openlineage-python takes a noticeable time to import, and most runs never
    # emit lineage.
    from ._lineage import Lineage

    return Lineage.from_target(target, namespace, pipeline)
