"""What a Kafka benchmark run starts from: the broker up, tracing off, a namespace of its own."""

from __future__ import annotations

import os
import uuid

from streamflow import devservices as services
from streamflow.connectors import KafkaOptions
from streamflow.model import Settings


def untraced_kafka() -> str:
    """Start Kafka, drop the ``OTEL_*`` exporter variables (these runs measure untraced work)
    and return a fresh namespace, so runs never share topics."""
    os.environ.pop("OTEL_EXPORTER_OTLP_ENDPOINT", None)
    os.environ.pop("OTEL_TRACES_EXPORTER", None)
    services.up(["kafka"])
    return "bench" + uuid.uuid4().hex[:8]


def client_options(bootstrap: str) -> KafkaOptions:
    """A benchmark's own clients connect as a worker would: with the ``kafka_*`` settings of
    the environment (or ``streamflow.toml``)."""
    return Settings.load().kafka_security.client_options(bootstrap)
