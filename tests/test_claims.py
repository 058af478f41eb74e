"""Claims on a compacted, retained topic (the webhook's idempotency keys): the first claim of a
key holds for every worker until it expires, on both transports."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager

import pytest
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

from streamflow import Settings
from streamflow.model import claims_topic
from streamflow.state import TopicClaims
from streamflow.transports import Transport, make_transport

pytestmark = pytest.mark.timeout(120)


@asynccontextmanager
async def workers(settings: Settings, n: int) -> AsyncIterator[list[TopicClaims]]:
    """``n`` workers' claims, each on its own transport (its own connection to the log)."""
    async with AsyncExitStack() as stack:
        out = []
        for _ in range(n):
            t: Transport = make_transport(settings)
            await t.start()
            stack.push_async_callback(t.close)
            claims = TopicClaims(t, settings.namespace, "pipe")
            stack.push_async_callback(claims.close)
            out.append(claims)
        yield out


async def test_the_first_claim_holds_for_every_worker(settings: Settings) -> None:
    async with workers(settings, 2) as (a, b):
        ta, tb = await a.table("hook", 3600), await b.table("hook", 3600)
        assert await ta.claim("k1", "body-A") == "body-A"
        assert await tb.claim("k1", "body-B") == "body-A", "the other worker sees the claim"
        assert await tb.claim("k1", "body-A") == "body-A", "a retry of the same body passes"
        # Both race for k2 with different values: both get the same winner.
        won = await asyncio.gather(ta.claim("k2", "x"), tb.claim("k2", "y"))
        assert won[0] == won[1] and won[0] in ("x", "y")
        assert await a.table("hook", 3600) is ta, "one table per name"
    async with workers(settings, 1) as (c,):  # a worker started later folds the topic
        tc = await c.table("hook", 3600)
        assert await tc.claim("k1", "body-C") == "body-A"
        assert await tc.claim("k2", "z") == won[0]


async def test_claims_expire_after_the_retention(settings: Settings) -> None:
    async with workers(settings, 2) as (a, b):
        ta, tb = await a.table("short", 1.0), await b.table("short", 1.0)
        assert await ta.claim("k", "old") == "old"
        assert await tb.claim("k", "new") == "old"
        await asyncio.sleep(1.2)
        assert await tb.claim("k", "new") == "new", "an expired claim no longer holds"
        assert await ta.claim("k", "newer") == "new"


async def test_the_claims_topic_is_compacted_and_retained(settings: Settings) -> None:
    async with workers(settings, 1) as (a,):
        await a.table("hook", 86_400)
    topic = claims_topic(settings.namespace, "pipe", "hook")
    if settings.kafka_bootstrap is None:
        t = make_transport(settings)
        await t.start()
        try:
            db = t.db  # type: ignore[attr-defined]
            assert list(await db.execute_fetchall(
                "SELECT 1 FROM compacted WHERE topic=?", (topic,))) == [(1,)]
            assert list(await db.execute_fetchall(
                "SELECT ms FROM retained WHERE topic=?", (topic,))) == [(86_400_000,)]
        finally:
            await t.close()
        return
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap)
    await admin.start()
    try:
        [resp] = await admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, topic)])
        configs = {c[0]: c[1] for r in resp.resources for c in r[4]}
    finally:
        await admin.close()
    assert configs["cleanup.policy"] == "compact,delete"
    assert configs["retention.ms"] == "86400000"
