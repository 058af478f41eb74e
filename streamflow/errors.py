"""One error hierarchy: everything StreamFlow raises on purpose is a :class:`StreamFlowError`.

Each error also keeps the builtin base it had before the hierarchy existed (``ValueError`` for
bad input, ``RuntimeError`` for a failing dependency), so existing ``except`` clauses still
match. This module imports nothing: every layer, the connector SDK included, may use it.
"""

from __future__ import annotations


class StreamFlowError(Exception):
    """The base of every error StreamFlow raises on purpose; the CLI prints it and exits 2."""


class ConfigError(StreamFlowError, ValueError):
    """A setting is missing or wrong (``STREAMFLOW_*``, ``streamflow.toml``, a flag)."""


class PipelineError(StreamFlowError, ValueError):
    """A pipeline declaration is inconsistent, or cannot be loaded."""


class ContractError(PipelineError):
    """An asset's contract changed incompatibly, or without a version bump."""


class ConnectorError(StreamFlowError, ValueError):
    """A connector is unknown, misconfigured, or misses its optional dependency."""


class TransportError(StreamFlowError, RuntimeError):
    """The log underneath cannot be reached or refused a request."""


class TransactionFailed(StreamFlowError, RuntimeError):
    """An exactly-once transaction was lost (fenced, or the broker went away): the consumer
    rewinds to its last commit."""


class TelemetryError(StreamFlowError, RuntimeError):
    """Tracing or metrics were configured in a way that cannot work."""


class OpsError(StreamFlowError, ValueError):
    """An operator command (runs, dead letters, lineage, trace) cannot do what was asked."""


class BackfillError(StreamFlowError, ValueError):
    """A backfill cannot be planned, resumed or cancelled as asked."""


class ServiceError(StreamFlowError):
    """A local development service (Kafka, Jaeger, PostgreSQL) cannot start or be reached."""


class AlertDeliveryError(StreamFlowError, RuntimeError):
    """An alert endpoint refused an alert, or kept failing until the retries ran out."""
