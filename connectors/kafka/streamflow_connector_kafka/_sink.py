"""The kafka sink: an idempotent acks=all producer, keyed, with the arrival id and the trace
context in headers; in exactly-once mode on the worker's own cluster, the engine produces its
records inside the input's transaction instead (``TopicSink``)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from typing import Any, Literal

import orjson
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError
from pydantic import BaseModel, ConfigDict, Field

from streamflow.connectors import (
    ConnectorContext,
    ConnectorError,
    KafkaSecurity,
    SinkRecord,
    TopicRecord,
)

log = logging.getLogger("streamflow.connectors.kafka")

ARRIVAL_ID_HEADER = "streamflow-arrival-id"
PARTITION_HEADER = "streamflow-partition"
TRACEPARENT_HEADER = "traceparent"


class KafkaSinkConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    bootstrap: str = Field(description="Kafka bootstrap servers, e.g. 127.0.0.1:9092")
    topic: str = Field(description="the topic to write; it must exist unless the broker "
                       "auto-creates topics")
    key_field: str | None = Field(
        None, description="value field used as the message key; default: the record key, "
        "else the arrival id")
    acks: Literal["all"] = Field("all", description="only acks=all: a write is durable")
    linger_ms: int = Field(5, ge=0, description="how long the producer waits to fill a batch")
    max_in_flight: int = Field(1000, ge=1, description="unacknowledged sends before write() "
                               "waits (backpressure)")
    retries: int = Field(5, ge=0, description="attempts after a failed send, with backoff")
    timeout_s: float = Field(30.0, gt=0, description="delivery timeout of one send")
    security: KafkaSecurity | None = Field(
        None, description="TLS and SASL towards this cluster; unset: the worker's kafka_* "
        "settings when bootstrap is the worker's cluster, else PLAINTEXT")


class KafkaSink:
    """Produces each record as JSON to ``topic``, keyed, with the arrival id in a header.

    Kafka appends; it cannot replace. In exactly-once mode, when ``bootstrap`` is the worker's
    own cluster, the engine produces these records inside the transaction that commits their
    input (see ``TopicSink``): a crash never duplicates one. Elsewhere delivery is at least
    once, made harmless by the key (on a compacted topic the latest value per key wins) and by
    the ``streamflow-arrival-id`` header (a consumer drops ids it has seen).
    """

    def __init__(self, config: KafkaSinkConfig) -> None:
        self.cfg = config
        self.cluster = config.bootstrap
        self.location = f"kafka://{config.bootstrap}/{config.topic}"
        self._producer: AIOKafkaProducer | None = None
        self._pending: list[tuple[asyncio.Future[Any], SinkRecord]] = []

    async def setup(self, ctx: ConnectorContext) -> None:
        producer = AIOKafkaProducer(
            **ctx.kafka_client_options(self.cfg.bootstrap, self.cfg.security),
            acks="all",
            enable_idempotence=True,  # retries inside the producer never duplicate
            linger_ms=self.cfg.linger_ms,
            request_timeout_ms=int(self.cfg.timeout_s * 1000),
        )
        try:
            await producer.start()
            await asyncio.wait_for(producer.partitions_for(self.cfg.topic), 15)
        except (KafkaError, OSError, TimeoutError) as e:
            with contextlib.suppress(Exception):
                await producer.stop()
            raise ConnectorError(
                f"kafka sink: cannot write topic {self.cfg.topic!r} at {self.cfg.bootstrap} "
                f"(does it exist?): {type(e).__name__}: {e}") from e
        self._producer = producer

    def _key(self, r: SinkRecord) -> str:
        if self.cfg.key_field is not None:
            if self.cfg.key_field not in r.value:
                raise ConnectorError(f"kafka sink: record {r.arrival_id} has no field "
                                     f"{self.cfg.key_field!r} (key_field)")
            return str(r.value[self.cfg.key_field])
        return r.key if r.key is not None else r.arrival_id

    def _record(self, r: SinkRecord) -> TopicRecord:
        headers = [(ARRIVAL_ID_HEADER, r.arrival_id.encode()),
                   (PARTITION_HEADER, r.partition.encode())]
        if r.traceparent is not None:
            headers.append((TRACEPARENT_HEADER, r.traceparent))
        return TopicRecord(self.cfg.topic, self._key(r).encode(), orjson.dumps(r.value), headers)

    def topic_records(self, records: Sequence[SinkRecord]) -> list[TopicRecord]:
        return [self._record(r) for r in records]

    async def _send(self, r: SinkRecord) -> asyncio.Future[Any]:
        assert self._producer is not None
        t = self._record(r)
        fut: asyncio.Future[Any] = await self._producer.send(
            t.topic, t.value, key=t.key, headers=t.headers)
        return fut

    async def write(self, records: Sequence[SinkRecord]) -> None:
        if self._producer is None:
            raise ConnectorError("kafka sink: write() before setup()")
        for r in records:
            if len(self._pending) >= self.cfg.max_in_flight:
                await self.flush()
            self._pending.append((await self._send(r), r))

    async def flush(self) -> None:
        """Wait for every send; retry failed ones with exponential backoff, then raise."""
        pending, self._pending = self._pending, []
        delay = 0.2
        for attempt in range(self.cfg.retries + 1):
            results = await asyncio.gather(*(f for f, _ in pending), return_exceptions=True)
            failed = [(r, e) for (_, r), e in zip(pending, results, strict=True)
                      if isinstance(e, BaseException)]
            if not failed:
                return
            if attempt == self.cfg.retries:
                r, e = failed[0]
                raise ConnectorError(
                    f"kafka sink: {len(failed)} record(s) not delivered to {self.cfg.topic!r} "
                    f"after {attempt + 1} attempt(s), e.g. {r.arrival_id}: "
                    f"{type(e).__name__}: {e}") from e
            log.warning("kafka sink: %d send(s) to %s failed (%s); retrying in %.1fs",
                        len(failed), self.cfg.topic, failed[0][1], delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)
            pending = [(await self._send(r), r) for r, _ in failed]

    async def stop(self) -> None:
        producer = self._producer
        if producer is None:
            return
        try:
            await self.flush()
        finally:
            self._producer = None
            await producer.stop()
