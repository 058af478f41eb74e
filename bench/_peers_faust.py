"""Faust (faust-streaming) in the peers benchmark: one agent per workload, as its docs show.

Raw serializers on the topics (the agent decodes and validates with pydantic itself, the same
work as the others); the join keeps the side that came first in a Table (in memory, backed by
its changelog topic), as Faust's docs recommend for stateful work. Settings are Faust's
defaults (at-least-once, commit every 2.8 s or 10,000 messages) apart from the web server (off)
and the partitions (4).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from typing import Any

from ._peers_common import Payment, Sale, Spec, price, settle


def main(spec: Spec) -> None:
    import faust

    app = faust.App(
        f"{spec.ns}-faust", broker=f"kafka://{spec.bootstrap}", store="memory://",
        key_serializer="raw", value_serializer="raw", topic_partitions=spec.partitions,
        topic_replication_factor=1, web_enabled=False, consumer_auto_offset_reset="earliest",
        processing_guarantee="at_least_once", producer_linger=0.005)
    dst = app.topic(spec.topic(spec.output), key_serializer="raw", value_serializer="raw",
                    partitions=spec.partitions)

    if spec.workload == "join":
        sales_topic = spec.topic("sales")
        pending = app.Table("pending", default=None, partitions=spec.partitions,
                            key_type=bytes, value_type=bytes)
        both = app.topic(spec.topic("sales"), spec.topic("payments"), key_serializer="raw",
                         value_serializer="raw")

        @app.agent(both)
        async def join(stream: Any) -> AsyncIterator[None]:
            async for event in stream.events():
                key, value = event.key, event.value
                mine = b"S" if event.message.topic == sales_topic else b"P"
                other = pending.get(key)
                if other is None:
                    pending[key] = mine + value
                    continue
                del pending[key]
                s, p = (value, other[1:]) if mine == b"S" else (other[1:], value)
                out = settle(Sale.model_validate_json(s), Payment.model_validate_json(p))
                await dst.send(key=key, value=out.model_dump_json().encode())
            yield None
    else:
        src = app.topic(spec.topic(spec.inputs[0]), key_serializer="raw",
                        value_serializer="raw")
        mapping = spec.workload != "passthrough"

        @app.agent(src)
        async def process(stream: Any) -> AsyncIterator[None]:
            async for key, value in stream.items():
                if mapping:
                    value = price(Sale.model_validate_json(value)).model_dump_json().encode()
                await dst.send(key=key, value=value)
            yield None

    logging.getLogger("faust").setLevel(logging.WARNING)
    faust.Worker(app, loglevel="WARNING", quiet=True).execute_from_commandline()
