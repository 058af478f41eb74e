"""Claims: the first value claimed for a key holds until it expires, for every worker.

A source that must refuse a key reused with other content (the webhook's idempotency keys)
claims the key with a digest of the content: whichever worker receives the reuse, it gets the
first claim back and can tell the two apart. The engine backs this with a compacted topic on
its transport (``ConnectorContext.claims``); ``LocalClaims`` is the same rule in one process,
for a connector run without a worker (tests, the kit).
"""

from __future__ import annotations

import time
from typing import Protocol, runtime_checkable


@runtime_checkable
class ClaimTable(Protocol):
    async def claim(self, key: str, value: str) -> str:
        """Claim ``key`` with ``value`` unless a live claim holds it; return the value that
        holds it now: ``value`` when this was the first (or an equal) claim."""
        ...


@runtime_checkable
class Claims(Protocol):
    async def table(self, name: str, retention_s: float) -> ClaimTable:
        """The table ``name`` of this pipeline (one per connector, say), whose claims expire
        ``retention_s`` after they were made; opened once, then shared by later calls."""
        ...


class LocalClaims:
    """Claims kept in this process only: no other worker sees them."""

    def __init__(self) -> None:
        self._tables: dict[str, _LocalTable] = {}

    async def table(self, name: str, retention_s: float) -> ClaimTable:
        return self._tables.setdefault(name, _LocalTable(retention_s))


class _LocalTable:
    def __init__(self, retention_s: float) -> None:
        self.retention_s = retention_s
        self.held: dict[str, tuple[float, str]] = {}

    async def claim(self, key: str, value: str) -> str:
        now = time.time()
        if len(self.held) > 10_000:  # forget expired claims now and then
            self.held = {k: c for k, c in self.held.items() if c[0] + self.retention_s > now}
        at, held = self.held.get(key, (0.0, ""))
        if held and at + self.retention_s > now:
            return held
        self.held[key] = (now, value)
        return value
