"""The kafka source: every partition of a topic, offsets committed to a group only at ack."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Any, Literal

import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError
from pydantic import BaseModel, ConfigDict, Field

from streamflow.connectors import (
    ConnectorContext,
    ConnectorError,
    KafkaSecurity,
    Reject,
    SourceBatch,
    SourceRecord,
    duplicate_name,
)

log = logging.getLogger("streamflow.connectors.kafka")

class KafkaSourceConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    bootstrap: str = Field(description="Kafka bootstrap servers, e.g. 127.0.0.1:9092")
    topic: str = Field(description="the topic to read")
    group_id: str | None = Field(
        None, description="consumer group holding the committed offsets; default "
        "streamflow.<namespace>.<pipeline>.<source name>")
    format: Literal["json", "raw"] = Field(
        "json", description='"json": each value is a JSON object; "raw": {"value": str, '
        '"key": str | null} from the UTF-8 value and key')
    follow: bool = Field(
        False, description="keep reading new records instead of ending once caught up to the "
        "end offsets seen at start")
    batch_size: int = Field(500, ge=1, description="most records per batch (one ack each)")
    poll_timeout_s: float = Field(0.5, gt=0, description="how long one poll waits for data")
    allow_duplicate_keys: bool = Field(
        False, description='with format "json": accept an object with a name twice (the last '
        "one wins) instead of dead-lettering it")
    security: KafkaSecurity | None = Field(
        None, description="TLS and SASL towards this cluster; unset: the worker's kafka_* "
        "settings when bootstrap is the worker's cluster, else PLAINTEXT")


class KafkaSource:
    """Reads every partition of ``topic``; one poll is one batch, acked by a group commit.

    Record ids are ``<topic>:<partition>:<offset>``: a batch re-read after a crash (read but
    never acked) yields the same ids, so its arrivals dedupe downstream.
    """

    def __init__(self, config: KafkaSourceConfig) -> None:
        self.cfg = config
        self.group_id = config.group_id or ""
        self._consumer: AIOKafkaConsumer | None = None
        self._tps: list[TopicPartition] = []
        self._end: dict[TopicPartition, int] = {}

    async def setup(self, ctx: ConnectorContext) -> None:
        self.group_id = self.cfg.group_id or _default_group(ctx)
        consumer = AIOKafkaConsumer(
            **ctx.kafka_client_options(self.cfg.bootstrap, self.cfg.security),
            group_id=self.group_id,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            # Records of aborted (or still open) transactions never become arrivals.
            isolation_level="read_committed",
            max_poll_records=self.cfg.batch_size,
        )
        try:
            await consumer.start()
            parts = await _partitions(consumer, self.cfg.topic)
        except (KafkaError, OSError, ConnectorError) as e:
            await _stop_quietly(consumer)
            raise ConnectorError(
                f"kafka source: cannot read topic {self.cfg.topic!r} at "
                f"{self.cfg.bootstrap}: {e}") from e
        self._tps = [TopicPartition(self.cfg.topic, p) for p in sorted(parts)]
        consumer.assign(self._tps)  # group used for offsets only: no rebalances mid-batch
        self._consumer = consumer
        if not self.cfg.follow:
            self._end = await consumer.end_offsets(self._tps)

    async def read(self) -> AsyncIterator[SourceBatch]:
        consumer = self._consumer
        if consumer is None:
            raise RuntimeError("kafka source: read() before setup()")
        while self.cfg.follow or not await self._caught_up():
            polled = await consumer.getmany(
                timeout_ms=int(self.cfg.poll_timeout_s * 1000), max_records=self.cfg.batch_size)
            if not any(polled.values()):
                continue
            batch = SourceBatch([], [])
            position: dict[str, int] = {}
            for tp, msgs in sorted(polled.items(), key=lambda kv: kv[0].partition):
                for m in msgs:
                    self._decode(m, batch)
                if msgs:
                    position[str(tp.partition)] = msgs[-1].offset + 1
            batch.position = orjson.dumps(position).decode()
            yield batch

    async def _caught_up(self) -> bool:
        assert self._consumer is not None
        for tp in self._tps:
            if await self._consumer.position(tp) < self._end.get(tp, 0):
                return False
        return True

    def _decode(self, m: Any, batch: SourceBatch) -> None:
        origin = {"topic": m.topic, "partition": m.partition, "offset": m.offset}
        where = f"{m.topic}@{m.partition}:{m.offset}"
        value: bytes = m.value if m.value is not None else b""
        data: Any
        try:
            if self.cfg.format == "json":
                if m.value is None:
                    raise ValueError("tombstone (a null value): there is no record")
                data = orjson.loads(value)
                if not isinstance(data, dict):
                    raise ValueError(f"not a JSON object (a {type(data).__name__})")
                dup = None if self.cfg.allow_duplicate_keys else duplicate_name(value, data)
                if dup is not None:
                    raise ValueError(f"the name {dup!r} appears twice in one JSON object (set "
                                     "allow_duplicate_keys to accept such records, the last "
                                     "one winning)")
            else:
                key = m.key.decode("utf-8") if m.key is not None else None
                data = {"value": value.decode("utf-8"), "key": key}
        except (ValueError, UnicodeDecodeError) as e:  # orjson.JSONDecodeError is a ValueError
            what = "invalid JSON: " if isinstance(e, orjson.JSONDecodeError) else (
                "undecodable: " if isinstance(e, UnicodeDecodeError) else "")
            batch.rejects.append(
                Reject(origin, f"{where}: {what}{e}", value.decode("utf-8", "replace")))
            return
        traceparent = next((v for k, v in (m.headers or ()) if k == "traceparent"), None)
        batch.records.append(SourceRecord(data, origin, f"{m.topic}:{m.partition}:{m.offset}",
                                          traceparent=traceparent))

    async def ack(self, batch: SourceBatch) -> None:
        if self._consumer is None or not batch.position:
            return
        offsets = {TopicPartition(self.cfg.topic, int(p)): off
                   for p, off in orjson.loads(batch.position).items()}
        if offsets:
            await self._consumer.commit(offsets)

    async def stop(self) -> None:
        consumer, self._consumer = self._consumer, None
        if consumer is not None:
            await _stop_quietly(consumer)


async def _stop_quietly(consumer: AIOKafkaConsumer) -> None:
    """Stop, swallowing errors: aiokafka 0.14 can raise CancelledError out of stop() itself."""
    try:
        await consumer.stop()
    except asyncio.CancelledError:
        task = asyncio.current_task()
        if task is not None and task.cancelling():
            raise  # a real cancellation of ours
    except Exception as e:
        log.debug("kafka source: stopping the consumer: %r", e)


def _default_group(ctx: ConnectorContext) -> str:
    """One group per namespace, pipeline and source: two pipelines never share offsets."""
    return f"streamflow.{ctx.namespace}.{ctx.pipeline}.{ctx.name}"


async def _partitions(consumer: AIOKafkaConsumer, topic: str, timeout: float = 10.0) -> set[int]:
    """The topic's partitions; a missing topic is an error (we never auto-create it)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        parts = consumer.partitions_for_topic(topic)
        if parts:
            return set(parts)
        if loop.time() > deadline:
            raise ConnectorError(f"topic {topic!r} does not exist")
        await consumer._client.force_metadata_update()  # no public call refreshes one topic
        await asyncio.sleep(0.1)
