"""Arrivals (one record of an asset, with its metadata) and dead letters."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from ._assets import stable_id
from ._headers import (
    H_ARRIVAL_ID,
    H_ASSET,
    H_BACKFILL,
    H_EVENT_TIME,
    H_FORMAT,
    H_MODE,
    H_PARTITION,
    H_REPLAY,
    H_RERUN,
    H_RUN,
    H_TRACEPARENT,
    H_VERSION,
    HEADERS_VERSION,
    DeadLetterKind,
    Mode,
    header_int,
    mode_of,
)
from ._messages import Headers, OutMessage


@dataclass(slots=True)
class Arrival:
    """Asset ``asset``, partition ``partition``, version ``version`` is available: one record."""

    arrival_id: str
    asset: str
    partition: str
    version: int
    event_time_ms: int
    run: str
    mode: Mode
    key: bytes | None
    value: bytes
    traceparent: bytes | None = None
    replay: int = 0
    backfill: str = ""
    rerun: str = ""
    """Set by a backfill with ``--reprocess failed|all``: the run happens again, as a new run."""

    def headers(self) -> Headers:
        return arrival_headers(self.arrival_id.encode(), self.asset.encode(),
                               str(self.version).encode(), self.partition.encode(),
                               self.event_time_ms, self.run, self.mode, self.traceparent,
                               self.replay, self.backfill, self.rerun)

    def message(self, topic: str) -> OutMessage:
        """As published: keyed by record key, placed by partition key (co-partitioning)."""
        return OutMessage(topic, self.value, self.key, self.headers(),
                          partition_key=self.partition.encode())

    @classmethod
    def from_message(cls, key: bytes | None, value: bytes, headers: Headers) -> Arrival:
        return cls.from_headers(key, value, dict(headers))

    @classmethod
    def from_headers(cls, key: bytes | None, value: bytes, d: dict[str, bytes]) -> Arrival:
        """As ``from_message``, from headers already in a dict (the last of a name wins)."""
        return cls(
            arrival_id=d.get(H_ARRIVAL_ID, b"").decode("utf-8", "replace")
            or stable_id("foreign", hashlib.blake2b(value, digest_size=16).hexdigest()),
            asset=d.get(H_ASSET, b"").decode("utf-8", "replace"),
            partition=d.get(H_PARTITION, b"default").decode("utf-8", "replace"),
            version=header_int(d.get(H_VERSION), 1),
            event_time_ms=header_int(d.get(H_EVENT_TIME), 0),
            run=d.get(H_RUN, b"").decode("utf-8", "replace"),
            mode=mode_of(d.get(H_MODE)),
            key=key,
            value=value,
            traceparent=d.get(H_TRACEPARENT),
            replay=header_int(d.get(H_REPLAY), 0),
            backfill=d.get(H_BACKFILL, b"").decode("utf-8", "replace"),
            rerun=d.get(H_RERUN, b"").decode("utf-8", "replace"),
        )


_FORMAT = (H_FORMAT, HEADERS_VERSION)
_BACKFILL_MODE = (H_MODE, b"backfill")


def arrival_headers(arrival_id: bytes, asset: bytes, version: bytes, partition: bytes,
                    event_time_ms: int, run: str, mode: Mode, traceparent: bytes | None,
                    replay: int = 0, backfill: str = "", rerun: str = "") -> Headers:
    """An arrival's headers, the format's one definition (with ``assemble_headers`` and
    ``run_headers``, which the engine's per-batch path calls with what it made once)."""
    return assemble_headers(arrival_id, (H_ASSET, asset), (H_VERSION, version), partition,
                            event_time_ms,
                            run_headers(run, mode, traceparent, replay, backfill, rerun))


def assemble_headers(arrival_id: bytes, asset: tuple[str, bytes], version: tuple[str, bytes],
                     partition: bytes, event_time_ms: int, run: Headers) -> Headers:
    """An arrival's headers from its own parts and ``run``'s (``run_headers``)."""
    return [_FORMAT, (H_ARRIVAL_ID, arrival_id), asset, version, (H_PARTITION, partition),
            (H_EVENT_TIME, b"%d" % event_time_ms), *run]


def run_headers(run: str, mode: Mode, traceparent: bytes | None, replay: int = 0,
                backfill: str = "", rerun: str = "") -> Headers:
    """What every output of one run shares."""
    h: Headers = [(H_RUN, run.encode())]
    if mode == "backfill":  # absent is live, for every reader since the first format
        h.append(_BACKFILL_MODE)
    if traceparent is not None:
        h.append((H_TRACEPARENT, traceparent))
    if replay:
        h.append((H_REPLAY, b"%d" % replay))
    if backfill:
        h.append((H_BACKFILL, backfill.encode()))
    if rerun:
        h.append((H_RERUN, rerun.encode()))
    return h


@dataclass(slots=True)
class DeadLetter:
    """A record that could not go on, with where it came from and why."""

    reason: str
    stage: str
    origin: dict[str, Any]
    payload: str
    error: dict[str, Any] = field(default_factory=dict)
    arrival_id: str | None = None
    run_id: str | None = None
    attempts: int | None = None
    arrival: dict[str, str] | None = None
    """The arrival's headers, so ``streamflow dlq replay`` can re-inject it as it was."""
    kind: DeadLetterKind = "stage"
    """Who gave up on it: ``source``, ``stage`` or ``sink`` (only the last two can replay)."""
    sensitive: Sequence[str] = ()
    """Dotted names of the payload's sensitive fields: ``dlq show`` masks them."""
