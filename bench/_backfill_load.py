"""The live load of ``python -m bench backfill-live``, in its own process (live producers are
other services, not the worker): ``python -m bench._backfill_load TOPIC RATE PARTITIONS``
produces until SIGTERM, then prints how many events it sent."""

from __future__ import annotations

import asyncio
import signal
import sys

from aiokafka import AIOKafkaProducer

from streamflow import devservices as services

from ._kafka import client_options
from .backfill_live import LiveLoad


async def main(topic: str, rate: float, partitions: int) -> None:
    producer = AIOKafkaProducer(**client_options(services.KAFKA_BOOTSTRAP), acks="all",
                                enable_idempotence=True, linger_ms=0)
    await producer.start()
    load = LiveLoad(producer, topic, rate, partitions)
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, load.stop.set)
    try:
        await load.run()
    finally:
        await producer.stop()
    print(load.sent, flush=True)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], float(sys.argv[2]), int(sys.argv[3])))
