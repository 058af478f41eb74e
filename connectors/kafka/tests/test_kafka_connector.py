"""The kafka connector on the real broker: a foreign topic in, a foreign topic out."""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from pydantic import BaseModel

from streamflow import Asset, Pipeline, Settings, run_pipeline
from streamflow.connectors import (
    ConnectorContext,
    ConnectorError,
    KafkaSecurity,
    build_sink,
    build_source,
)
from streamflow.connectors.testing import check_sink, check_source
from tests.helpers import read_topic, values

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
INCOMING = f"00-{TRACE_ID}-00f067aa0ba902b7-01".encode()


class Order(BaseModel):
    id: int
    item: str
    qty: int


async def make_topics(bootstrap: str, *names: str) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(n, 2, 1) for n in names])
    finally:
        await admin.close()


async def produce(bootstrap: str, topic: str, rows: list[tuple[bytes | None, bytes]],
                  headers: list[tuple[str, bytes]] | None = None) -> None:
    p = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", enable_idempotence=True)
    await p.start()
    try:
        for key, value in rows:
            await p.send_and_wait(topic, value, key=key, headers=headers or [])
    finally:
        await p.stop()


async def consume_all(bootstrap: str, topic: str) -> list[tuple[bytes | None, dict[str, object],
                                                               dict[str, bytes]]]:
    c = AIOKafkaConsumer(bootstrap_servers=bootstrap, isolation_level="read_committed",
                         enable_auto_commit=False)
    await c.start()
    try:
        tps = [TopicPartition(topic, p) for p in range(2)]  # make_topics creates 2
        c.assign(tps)
        await c.seek_to_beginning(*tps)
        end = await c.end_offsets(tps)
        out = []
        while [tp for tp in tps if await c.position(tp) < end[tp]]:
            for msgs in (await c.getmany(timeout_ms=500)).values():
                out.extend((m.key, orjson.loads(m.value), dict(m.headers)) for m in msgs)
        return out
    finally:
        with contextlib.suppress(Exception, asyncio.CancelledError):
            await c.stop()


def order(i: int) -> tuple[bytes, bytes]:
    return str(i).encode(), orjson.dumps({"id": i, "item": f"item-{i}", "qty": i % 3 + 1})


def kafka_pipeline(bootstrap: str, src: str, dst: str) -> Pipeline:
    orders = Asset("orders", Order, key="id")
    doubled = Asset("doubled", Order, key="id")
    p = Pipeline("kafka-io")
    p.source("kafka", asset=orders, bootstrap=bootstrap, topic=src, batch_size=4)

    @p.stage(inputs=[orders], output=doubled)
    def double(o: Order) -> Order:
        return Order(id=o.id, item=o.item, qty=o.qty * 2)

    p.sink("kafka", asset=doubled, bootstrap=bootstrap, topic=dst)
    return p


async def test_topic_in_pipeline_topic_out_with_resume_and_dead_letters(
    settings: Settings, kafka_bootstrap: str
) -> None:
    src, dst = f"ext-in-{uuid.uuid4().hex[:8]}", f"ext-out-{uuid.uuid4().hex[:8]}"
    await make_topics(kafka_bootstrap, src, dst)
    await produce(kafka_bootstrap, src, [order(i) for i in range(10)])
    await produce(kafka_bootstrap, src, [(b"bad", b'{"id": 99, "item": ')])

    p = kafka_pipeline(kafka_bootstrap, src, dst)
    first = await run_pipeline(p, settings)
    assert (first.records_in, first.records_out, first.dead_lettered) == (11, 10, 1)

    out = await consume_all(kafka_bootstrap, dst)
    assert sorted(int(k or b"-1") for k, _, _ in out) == list(range(10)), "keyed by record key"
    assert all(v["qty"] == (int(v["id"]) % 3 + 1) * 2 for _, v, _ in out)
    ids = [h["streamflow-arrival-id"] for _, _, h in out]
    assert len(set(ids)) == 10 and all(ids), "every message carries its arrival id"

    dead = values(await read_topic(settings, settings.dead_letter_topic))
    assert len(dead) == 1
    origin = dead[0]["origin"]
    assert isinstance(origin, dict) and origin["topic"] == src
    assert set(origin) == {"topic", "partition", "offset"}
    assert "invalid JSON" in str(dead[0]["reason"]) and dead[0]["payload"] == '{"id": 99, "item": '

    await produce(kafka_bootstrap, src, [order(i) for i in range(10, 13)])
    second = await run_pipeline(p, settings)  # resumes after the last acked batch
    assert (second.records_in, second.records_out, second.dead_lettered) == (3, 3, 0)
    out = await consume_all(kafka_bootstrap, dst)
    assert sorted(int(k or b"-1") for k, _, _ in out) == list(range(13))


async def test_exactly_once_the_sink_produces_inside_the_input_transaction_with_the_trace(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    src, dst = f"ext-in-{uuid.uuid4().hex[:8]}", f"ext-out-{uuid.uuid4().hex[:8]}"
    await make_topics(kafka_bootstrap, src, dst)
    await produce(kafka_bootstrap, src, [order(i) for i in range(10)],
                  headers=[("traceparent", INCOMING)])
    settings = Settings(kafka_bootstrap=kafka_bootstrap, state_dir=tmp_path / "state",
                        namespace="t" + uuid.uuid4().hex[:10], partitions=2, http_port=0,
                        exactly_once=True, drain_timeout_s=60)

    summary = await run_pipeline(kafka_pipeline(kafka_bootstrap, src, dst), settings)
    assert (summary.records_out, summary.dead_lettered) == (10, 0)

    out = await consume_all(kafka_bootstrap, dst)
    assert sorted(int(k or b"-1") for k, _, _ in out) == list(range(10))
    for _, _, h in out:  # a consumer of the topic continues the trace
        assert h["traceparent"].decode().split("-")[1] == TRACE_ID
    # Produced in transactions: each commit leaves a marker, which takes an offset.
    c = AIOKafkaConsumer(bootstrap_servers=kafka_bootstrap)
    await c.start()
    try:
        ends = await c.end_offsets([TopicPartition(dst, p) for p in range(2)])
    finally:
        await c.stop()
    assert sum(ends.values()) > len(out), "the sink's records were not transactional"


PIPELINE = """
import os
from pydantic import BaseModel
from streamflow import Asset, Pipeline

class Order(BaseModel):
    id: int
    item: str
    qty: int

orders = Asset("orders", Order, key="id")
pipeline = Pipeline("traced")
pipeline.source("kafka", asset=orders, bootstrap=os.environ["SRC_BOOTSTRAP"],
                topic=os.environ["SRC_TOPIC"])
pipeline.sink("files", asset=orders, path=os.environ["OUT_DIR"])
"""


async def test_incoming_traceparent_is_continued(
    settings: Settings, kafka_bootstrap: str, tmp_path: Path, repo_root: Path
) -> None:
    src = f"ext-tp-{uuid.uuid4().hex[:8]}"
    await make_topics(kafka_bootstrap, src)
    await produce(kafka_bootstrap, src, [order(1), order(2)], headers=[("traceparent", INCOMING)])
    (tmp_path / "traced.py").write_text(textwrap.dedent(PIPELINE))
    env = {**os.environ, "SRC_BOOTSTRAP": kafka_bootstrap, "SRC_TOPIC": src,
           "OUT_DIR": str(tmp_path / "out"), "OTEL_TRACES_EXPORTER": "console",
           "STREAMFLOW_NAMESPACE": settings.namespace,
           "STREAMFLOW_STATE_DIR": str(settings.state_dir)}
    env.pop("STREAMFLOW_KAFKA_BOOTSTRAP", None)
    if settings.kafka_bootstrap:
        env["STREAMFLOW_KAFKA_BOOTSTRAP"] = settings.kafka_bootstrap
    done = await asyncio.to_thread(
        subprocess.run, [sys.executable, "-m", "streamflow", "run", str(tmp_path / "traced.py"),
                         "--json"], cwd=repo_root, env=env, capture_output=True, text=True,
        timeout=180)
    assert done.returncode == 0, done.stderr
    assert TRACE_ID in done.stdout, "the exported spans belong to the incoming trace"

    arrivals = await read_topic(settings, f"{settings.namespace}.orders")
    assert len(arrivals) == 2
    for m in arrivals:
        tp = dict(m.headers)["traceparent"].decode()
        _version, trace_id, span_id, flags = tp.split("-")
        assert trace_id == TRACE_ID, "the arrival continues the producer's trace"
        assert span_id != "00f067aa0ba902b7" and flags == "01"


async def test_follow_keeps_reading_new_records(kafka_bootstrap: str, tmp_path: Path) -> None:
    from streamflow.connectors import ConnectorContext, build_source

    topic = f"ext-follow-{uuid.uuid4().hex[:8]}"
    await make_topics(kafka_bootstrap, topic)
    await produce(kafka_bootstrap, topic, [order(i) for i in range(3)])
    src = build_source("kafka", {"bootstrap": kafka_bootstrap, "topic": topic, "follow": True,
                                 "format": "raw", "group_id": f"g-{topic}"})
    await src.setup(ConnectorContext("follow", "orders", str(tmp_path)))
    seen: list[dict[str, object]] = []
    it = src.read()
    try:
        async with asyncio.timeout(60):
            while len(seen) < 3:
                batch = await anext(it)
                seen.extend(r.data for r in batch.records)
                await src.ack(batch)
            await produce(kafka_bootstrap, topic, [order(i) for i in range(3, 5)])
            while len(seen) < 5:  # caught up, yet still reading: follow never ends by itself
                batch = await anext(it)
                seen.extend(r.data for r in batch.records)
                await src.ack(batch)
    finally:
        await it.aclose()  # type: ignore[attr-defined]
        await src.stop()
    assert sorted(str(d["key"]) for d in seen) == [str(i) for i in range(5)]
    assert orjson.loads(str(seen[0]["value"]))["item"].startswith("item-")


# -------------------------------------------- the connector kit (streamflow.connectors.testing)


async def test_kit_kafka_source(tmp_path: Path, kafka_bootstrap: str) -> None:
    topic = f"kit-src-{uuid.uuid4().hex[:8]}"

    async def seed() -> None:
        await make_topics(kafka_bootstrap, topic)
        rows = [(b"%d" % i, b'{"id": %d}' % i) for i in range(9)] + [(b"x", b"{not json")]
        await produce(kafka_bootstrap, topic, rows)

    report = await check_source(
        lambda: build_source("kafka", {"bootstrap": kafka_bootstrap, "topic": topic,
                                       "batch_size": 2}),
        expected_count=9, state_dir=tmp_path / "state", seed=seed, name=f"kit-{topic}")
    assert report.rejects == 1
    assert all(rid.startswith(f"{topic}:") for rid in report.record_ids)


async def test_kit_kafka_sink(tmp_path: Path, kafka_bootstrap: str) -> None:
    topic = f"kit-snk-{uuid.uuid4().hex[:8]}"
    await make_topics(kafka_bootstrap, topic)

    async def read_back() -> list[dict[str, Any]]:
        """Kafka appends; a consumer dedupes by the arrival-id header, as documented."""
        latest = {h["streamflow-arrival-id"]: (k, v) for k, v, h in
                  await consume_all(kafka_bootstrap, topic)}
        return [{"_key": k.decode() if k else None, **v} for k, v in latest.values()]

    await check_sink(
        lambda: build_sink("kafka", {"bootstrap": kafka_bootstrap, "topic": topic}),
        read_back=read_back, state_dir=tmp_path / "state",
        bad_factory=lambda: build_sink("kafka", {"bootstrap": "127.0.0.1:1", "topic": topic}))


async def test_security_is_the_workers_on_its_cluster_else_the_connectors_own(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    """The shared broker speaks PLAINTEXT only: a client that tries SCRAM there fails, which
    shows whose settings each client took."""
    planted = "pw-planted-Qw3e"
    sasl = {"security_protocol": "SASL_PLAINTEXT", "sasl_mechanism": "SCRAM-SHA-512",
            "sasl_username": "alice", "sasl_password": planted}
    topic = f"kit-sec-{uuid.uuid4().hex[:8]}"
    await make_topics(kafka_bootstrap, topic)
    worker = ConnectorContext("k", "orders", str(tmp_path), kafka_bootstrap=kafka_bootstrap,
                              kafka_security=KafkaSecurity.model_validate(sasl))
    src = build_source("kafka", {"bootstrap": kafka_bootstrap, "topic": topic})
    with pytest.raises(ConnectorError, match="cannot read topic") as e:
        await src.setup(worker)  # the worker's SCRAM settings, on the worker's cluster
    assert planted not in str(e.value)
    own = build_source("kafka", {"bootstrap": kafka_bootstrap, "topic": topic,
                                 "security": {"security_protocol": "PLAINTEXT"}})
    await own.setup(worker)  # its own settings win
    await own.stop()
    snk = build_sink("kafka", {"bootstrap": kafka_bootstrap, "topic": topic, "security": sasl})
    with pytest.raises(ConnectorError, match="cannot write topic") as e:
        await snk.setup(ConnectorContext("k", "orders", str(tmp_path)))
    assert planted not in str(e.value) and planted not in repr(snk.cfg)
    plain = build_sink("kafka", {"bootstrap": kafka_bootstrap, "topic": topic})
    await plain.setup(ConnectorContext("k", "orders", str(tmp_path)))  # not the worker's: as is
    await plain.stop()
