"""The connector contracts: small async sources and sinks with a setup/stop lifecycle."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol, runtime_checkable

from pydantic import BaseModel

from ._claims import Claims
from ._kafka import KafkaOptions, KafkaSecurity, same_cluster


@dataclass(slots=True)
class SourceRecord:
    """One raw record a source read, and where it came from (for errors and deterministic ids)."""

    data: dict[str, Any]
    origin: dict[str, Any]
    record_id: str
    traceparent: bytes | None = None
    """Incoming W3C trace context (e.g. from a foreign Kafka record): the record's trace goes on
    under it instead of starting a new one."""


@dataclass(slots=True)
class Reject:
    """A raw record the source could not even parse; it goes to the dead-letter topic."""

    origin: dict[str, Any]
    reason: str
    payload: str


@dataclass(slots=True)
class SourceBatch:
    """A unit the source acknowledges as a whole once its arrivals are durable (e.g. a file)."""

    records: list[SourceRecord]
    rejects: list[Reject] = field(default_factory=list)
    position: str = ""
    dead_lettered: int = 0
    """Set by the engine before ``ack``: how many of this batch went to dead letters."""


@dataclass(slots=True)
class SinkRecord:
    key: str | None
    arrival_id: str
    partition: str
    value: dict[str, Any]
    traceparent: bytes | None = None
    """The W3C trace context of the record's delivery: a sink whose target carries headers
    forwards it, so whoever reads the record there continues the trace."""


@dataclass(frozen=True, slots=True)
class TopicRecord:
    """A record a ``TopicSink`` asks the engine to produce for it."""

    topic: str
    key: bytes | None
    value: bytes
    headers: list[tuple[str, bytes]]


@runtime_checkable
class TopicSink(Protocol):
    """A sink that writes Kafka topics and can hand its records to the engine instead.

    In exactly-once mode, when ``cluster`` (bootstrap servers) names the worker's own Kafka,
    the engine produces ``topic_records`` inside the transaction that commits the records'
    input offsets, so a crash never duplicates one. Otherwise it calls ``write`` and
    ``flush`` as for any sink: at least once."""

    cluster: str

    def topic_records(self, records: Sequence[SinkRecord]) -> list[TopicRecord]: ...


@dataclass(slots=True)
class ConnectorContext:
    """What the engine hands a connector: its name in the pipeline and where it may keep state."""

    name: str
    asset: str
    state_dir: str
    namespace: str = "sf"
    pipeline: str = ""
    partition_by: str | None = None
    """The asset's ``partition_by`` field, or None: then its records' partition is only their key,
    so a sink that lays out files or tables per partition should treat the asset as one."""
    claims: Claims | None = None
    """Claims shared by every worker of the pipeline (a compacted topic on the transport);
    None outside a worker: use ``LocalClaims``."""
    kafka_bootstrap: str | None = None
    """The worker's Kafka (None: the embedded log)."""
    kafka_security: KafkaSecurity = field(default_factory=KafkaSecurity)
    """How the worker reaches its Kafka (``Settings.kafka_security``)."""

    def kafka_client_options(self, bootstrap: str,
                             security: KafkaSecurity | None = None) -> KafkaOptions:
        """aiokafka options for ``bootstrap``: the connector's own ``security`` if it gives
        one, else the worker's when ``bootstrap`` is the worker's cluster, else PLAINTEXT."""
        if security is None:
            own = self.kafka_bootstrap is not None and same_cluster(bootstrap,
                                                                    self.kafka_bootstrap)
            security = self.kafka_security if own else KafkaSecurity()
        return security.client_options(bootstrap)


@runtime_checkable
class Source(Protocol):
    async def setup(self, ctx: ConnectorContext) -> None: ...

    def read(self) -> AsyncIterator[SourceBatch]:
        """Yield batches; a finite source returns when it is exhausted."""
        ...

    async def ack(self, batch: SourceBatch) -> None:
        """Called once the batch's arrivals and dead letters are durable."""
        ...

    async def stop(self) -> None: ...


@dataclass(frozen=True, slots=True)
class TimeRange:
    """A half-open range [start, end) of event time, for backfills."""

    start: datetime
    end: datetime

    def __post_init__(self) -> None:
        if self.end <= self.start:
            raise ValueError(f"empty range: {self.start.isoformat()} >= {self.end.isoformat()}")

    def __contains__(self, t: datetime) -> bool:
        return self.start <= t < self.end


@runtime_checkable
class BackfillSource(Protocol):
    """A source that can also read history, for ``streamflow backfill``.

    ``backfill`` is called on a fresh instance, without ``setup``, while the live source may
    be running elsewhere: it reads and changes nothing else (no claims, no positions, no
    acks). It yields at least the records whose event time falls in ``window``; the engine
    drops the rest by the asset's event time. Record ids must be the ones live reading gives,
    so a record seen both live and by a backfill is run once."""

    def backfill(self, window: TimeRange) -> AsyncIterator[SourceBatch]: ...


@runtime_checkable
class Sink(Protocol):
    location: str

    async def setup(self, ctx: ConnectorContext) -> None: ...

    async def write(self, records: Sequence[SinkRecord]) -> None:
        """Write idempotently by key: a redelivered record must not appear twice to a reader
        (an append-only sink may store it again if its documented read rule hides the copy)."""
        ...

    async def flush(self) -> None: ...

    async def stop(self) -> None: ...


@dataclass(frozen=True, slots=True)
class ConnectorSpec:
    """What an entry point in the ``streamflow.connectors`` group points at."""

    name: str
    source: type[Any] | None = None
    sink: type[Any] | None = None
    source_config: type[BaseModel] | None = None
    sink_config: type[BaseModel] | None = None
    extra: str | None = None
