"""The one place a transport is chosen: Kafka when a bootstrap is set, else the embedded log."""

from __future__ import annotations

from pathlib import Path

from streamflow.model import Settings
from streamflow.transports.kafka._replication import Replication
from streamflow.transports.kafka._transport import KafkaTransport

from ._embedded import EmbeddedTransport
from ._protocol import Transport


def make_transport(settings: Settings) -> Transport:
    if settings.kafka_bootstrap:
        return KafkaTransport(settings.kafka_bootstrap, partitions=settings.partitions,
                              exactly_once=settings.exactly_once,
                              session_timeout_s=settings.session_timeout_s,
                              instance_id=settings.worker_id,
                              security=settings.kafka_security,
                              replication=Replication(settings.replication_factor,
                                                      settings.min_insync_replicas))
    return EmbeddedTransport(Path(settings.state_dir) / "embedded.db",
                             exactly_once=settings.exactly_once)
