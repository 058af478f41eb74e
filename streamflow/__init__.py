"""StreamFlow: event-driven streaming orchestration.

Declare assets with versioned pydantic contracts, sources, stages (with quality-gate checks)
and sinks on a :class:`Pipeline`, then run it with ``streamflow run module:pipeline`` or
:func:`run_pipeline`. Checks and alerts are in :mod:`streamflow.gates`; the connector SDK is
:mod:`streamflow.connectors`; every error is a :class:`StreamFlowError`.
"""

from typing import Any

from ._deprecated import moved
from .engine import RunSummary, Worker, run_pipeline
from .errors import (
    ConfigError,
    ConnectorError,
    ContractError,
    PipelineError,
    StreamFlowError,
)
from .model import (
    AllOf,
    AnyOf,
    Arrival,
    Asset,
    Inputs,
    OnEach,
    Pipeline,
    RetryPolicy,
    Sensitive,
    Settings,
    Window,
    WindowRecords,
    load_pipeline,
    stable_id,
)

__version__ = "0.1.0"

__all__ = [
    "AllOf",
    "AnyOf",
    "Arrival",
    "Asset",
    "ConfigError",
    "ConnectorError",
    "ContractError",
    "Inputs",
    "OnEach",
    "Pipeline",
    "PipelineError",
    "RetryPolicy",
    "RunSummary",
    "Sensitive",
    "Settings",
    "StreamFlowError",
    "Window",
    "WindowRecords",
    "Worker",
    "__version__",
    "load_pipeline",
    "run_pipeline",
    "stable_id",
]

# Checks and alerts moved to ``streamflow.gates``: the old names still resolve, with a warning.
_MOVED = {name: "streamflow.gates" for name in (
    "Alert", "AlertSink", "AllowedValues", "Check", "CheckResult", "Expect", "ExpectBatch",
    "Freshness", "LogAlerts", "NotNull", "Pattern", "Range", "RowCount", "Unique",
    "WebhookAlerts")}


def __getattr__(name: str) -> Any:
    return moved(__name__, name, _MOVED)
