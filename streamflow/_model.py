"""The pure model: assets, arrivals and their deterministic ids. No I/O lives here."""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from pydantic import BaseModel

from .transports._protocol import OutMessage

M = TypeVar("M", bound=BaseModel)

DEFAULT_NAMESPACE = "sf"

# Header names. Arrival metadata rides in headers so the value stays the plain record JSON
# that any Kafka consumer can read.
H_TRACEPARENT = "traceparent"
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

Headers = list[tuple[str, bytes]]


@dataclass(frozen=True, slots=True)
class Asset(Generic[M]):
    """A named data product with a versioned contract; one topic each.

    ``key`` names the contract field used as the record key; ``partition_by`` names the field
    barriers align on (a date, a store); it defaults to the key.
    """

    name: str
    contract: type[M]
    key: str | None = None
    partition_by: str | None = None
    version: int = 1
    event_time: str | None = None

    def __post_init__(self) -> None:
        if not self.name or not all(c.isalnum() or c in "_-" for c in self.name):
            raise ValueError(
                f"asset name {self.name!r} must be non-empty letters, digits, '_' or '-'"
            )
        # Computed fields count: a tick's day can be derived from its timestamp.
        fields = [*self.contract.model_fields, *self.contract.model_computed_fields]
        for role, fname in (("key", self.key), ("partition_by", self.partition_by),
                            ("event_time", self.event_time)):
            if fname is not None and fname not in fields:
                raise ValueError(
                    f"asset {self.name!r}: {role}={fname!r} is not a field of "
                    f"{self.contract.__name__} (fields: {', '.join(fields)})"
                )

    def topic(self, namespace: str = DEFAULT_NAMESPACE) -> str:
        """Its topic; the namespace keeps several deployments (or tests) apart on one broker."""
        return f"{namespace}.{self.name}"

    def key_of(self, record: BaseModel) -> str | None:
        return None if self.key is None else str(getattr(record, self.key))

    def partition_of(self, record: BaseModel) -> str:
        fname = self.partition_by or self.key
        if fname is None:
            return "default"
        value = getattr(record, fname)
        return value.isoformat() if hasattr(value, "isoformat") else str(value)

    def event_time_ms(self, record: BaseModel) -> int:
        if self.event_time is not None:
            value = getattr(record, self.event_time)
            if hasattr(value, "timestamp"):
                return int(value.timestamp() * 1000)
        return int(time.time() * 1000)


def lane_topic(namespace: str, asset: str) -> str:
    """Where a backfill replays ``asset``: beside its live topic, read by the same consumer
    group (so the same worker owns partition n of both) but only when live work is done."""
    return f"{namespace}.backfill.{asset}"


def stable_id(*parts: str | int) -> str:
    """A deterministic id: the same inputs always give the same id, so redelivery is harmless."""
    h = hashlib.blake2b(digest_size=16)
    for p in parts:
        h.update(str(p).encode())
        h.update(b"\x1f")
    return h.hexdigest()


@dataclass(slots=True)
class Arrival:
    """Asset ``asset``, partition ``partition``, version ``version`` is available: one record."""

    arrival_id: str
    asset: str
    partition: str
    version: int
    event_time_ms: int
    run: str
    mode: str
    key: bytes | None
    value: bytes
    traceparent: bytes | None = None
    replay: int = 0
    backfill: str = ""
    rerun: str = ""
    """Set by a backfill with ``--reprocess failed|all``: the run happens again, as a new run."""

    def headers(self) -> Headers:
        h: Headers = [
            (H_ARRIVAL_ID, self.arrival_id.encode()),
            (H_ASSET, self.asset.encode()),
            (H_VERSION, str(self.version).encode()),
            (H_PARTITION, self.partition.encode()),
            (H_EVENT_TIME, str(self.event_time_ms).encode()),
            (H_RUN, self.run.encode()),
            (H_MODE, self.mode.encode()),
        ]
        if self.traceparent is not None:
            h.append((H_TRACEPARENT, self.traceparent))
        if self.replay:
            h.append((H_REPLAY, str(self.replay).encode()))
        if self.backfill:
            h.append((H_BACKFILL, self.backfill.encode()))
        if self.rerun:
            h.append((H_RERUN, self.rerun.encode()))
        return h

    def message(self, topic: str) -> OutMessage:
        """As published: keyed by record key, placed by partition key (co-partitioning)."""
        return OutMessage(topic, self.value, self.key, self.headers(),
                          partition_key=self.partition.encode())

    @classmethod
    def from_message(cls, key: bytes | None, value: bytes, headers: Headers) -> Arrival:
        d = {k: v for k, v in headers}
        return cls(
            arrival_id=d.get(H_ARRIVAL_ID, b"").decode("utf-8", "replace")
            or stable_id("foreign", hashlib.blake2b(value, digest_size=16).hexdigest()),
            asset=d.get(H_ASSET, b"").decode("utf-8", "replace"),
            partition=d.get(H_PARTITION, b"default").decode("utf-8", "replace"),
            version=_int(d.get(H_VERSION), 1),
            event_time_ms=_int(d.get(H_EVENT_TIME), 0),
            run=d.get(H_RUN, b"").decode("utf-8", "replace"),
            mode=d.get(H_MODE, b"live").decode("utf-8", "replace"),
            key=key,
            value=value,
            traceparent=d.get(H_TRACEPARENT),
            replay=_int(d.get(H_REPLAY), 0),
            backfill=d.get(H_BACKFILL, b"").decode("utf-8", "replace"),
            rerun=d.get(H_RERUN, b"").decode("utf-8", "replace"),
        )


def _int(raw: bytes | None, default: int) -> int:
    """Headers from a foreign producer may be anything; bad metadata must not stop a worker."""
    try:
        return int(raw) if raw is not None else default
    except ValueError:
        return default


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
    kind: str = "stage"
    """Who gave up on it: ``source``, ``stage`` or ``sink`` (only the last two can replay)."""
