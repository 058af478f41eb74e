"""What every loop of a worker shares: its transport, tracing, metrics and counters."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from streamflow.connectors import Claims, ConnectorContext
from streamflow.gates.runtime import Alerter
from streamflow.model import Asset, Settings
from streamflow.observability import Metrics, RunEvents, Tracing
from streamflow.state import Checkpoints
from streamflow.transports import Transport


@dataclass
class Counters:
    records_in: int = 0
    records_out: int = 0
    dead_lettered: int = 0
    runs: int = 0
    retried: int = 0
    deduped: int = 0


@dataclass(kw_only=True)
class Ctx:
    """What every loop of one worker shares: the log, telemetry, counters and settings."""

    transport: Transport
    tracing: Tracing
    counters: Counters
    dlq_topic: str
    poll_batch: int
    namespace: str
    metrics: Metrics
    commit_interval_s: float = 0.1
    alerter: Alerter | None = None
    pipeline: str = ""
    max_record_bytes: int = 256 * 1024
    backfill_batch: int = 16
    lineage: RunEvents | None = None
    """OpenLineage run events, when ``Settings.lineage`` names a target."""
    kafka_bootstrap: str | None = None
    """The worker's Kafka (None: embedded): a ``TopicSink`` on it joins the transaction."""
    checkpoints: Checkpoints | None = None
    """Where trigger state is checkpointed at a clean stop (None: restores read it all)."""

    def topic(self, asset: Asset[Any]) -> str:
        return asset.topic(self.namespace)


def connector_context(
    name: str, asset: Asset[Any], state_dir: str, namespace: str, pipeline: str,
    claims: Claims | None = None, settings: Settings | None = None,
) -> ConnectorContext:
    ctx = ConnectorContext(name=name, asset=asset.name, state_dir=state_dir,
                           namespace=namespace, pipeline=pipeline,
                           partition_by=asset.partition_by, claims=claims)
    if settings is not None:  # the worker's Kafka, for connectors that reach it themselves
        ctx.kafka_bootstrap, ctx.kafka_security = settings.kafka_bootstrap, settings.kafka_security
    return ctx
