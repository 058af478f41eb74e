"""Helpers shared by the benchmarks."""

from __future__ import annotations

from aiokafka.admin import AIOKafkaAdminClient


async def drop_topics(bootstrap: str, namespace: str) -> None:
    """Delete a run's topics: a broker slows down (and starts slower) as partitions pile up."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        topics = [t for t in await admin.list_topics() if t.startswith(namespace + ".")]
        if topics:
            await admin.delete_topics(topics)
    finally:
        await admin.close()
