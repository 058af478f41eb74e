"""Header names, and reading them back from any producer.

Arrival metadata rides in headers so the value stays the plain record JSON that any Kafka
consumer can read.
"""

from __future__ import annotations

from typing import Literal

from ._messages import Headers

H_TRACEPARENT = "traceparent"
H_FORMAT = "sf-format"  # the version of this set of headers (absent: 1, before it was written)
HEADERS_VERSION = b"1"
H_ARRIVAL_ID = "sf-arrival-id"
H_ASSET = "sf-asset"
H_VERSION = "sf-contract-version"
H_PARTITION = "sf-partition"
H_EVENT_TIME = "sf-event-time-ms"
H_RUN = "sf-run"
H_MODE = "sf-mode"
H_REASON = "sf-reason"
H_ATTEMPT = "sf-attempt"
H_RETRY_AT = "sf-retry-at-ms"
H_REPLAY = "sf-replay"
H_PLANNED = "sf-planned-run"  # the message value holds a planned run's inputs, not a record
H_BACKFILL = "sf-backfill"  # the backfill that replayed it (mode=backfill)
H_RERUN = "sf-rerun"  # a backfill that reprocesses it: its run gets a new id
H_BACKFILL_STAGES = "sf-backfill-stages"  # on a lane record: the stages it re-fires

__all__ = ["DeadLetterKind", "Headers", "Mode", "header_int", "mode_of"]


def header_int(raw: bytes | None, default: int) -> int:
    """Headers from a foreign producer may be anything; bad metadata must not stop a worker."""
    try:
        return int(raw) if raw is not None else default
    except ValueError:
        return default


Mode = Literal["live", "backfill"]
"""Whether an arrival (and every run and output it leads to) is live or replayed by a backfill."""

DeadLetterKind = Literal["source", "stage", "sink", "gate"]
"""Who gave up on a record: only stage, sink and gate dead letters can be replayed."""


def mode_of(raw: bytes | None) -> Mode:
    """A mode header from any producer: anything but ``backfill`` is live."""
    return "backfill" if raw == b"backfill" else "live"
