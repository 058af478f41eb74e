"""StreamFlow: event-driven streaming orchestration.

Declare assets with versioned pydantic contracts, sources, stages (with quality-gate checks)
and sinks on a :class:`Pipeline`, then run it with ``streamflow run module:pipeline`` or
:func:`run_pipeline`.
"""

from ._alerts import Alert, AlertSink, LogAlerts, WebhookAlerts
from ._checks import (
    AllowedValues,
    Check,
    CheckResult,
    Expect,
    ExpectBatch,
    Freshness,
    NotNull,
    Pattern,
    Range,
    RowCount,
    Unique,
)
from ._config import ConfigError, Settings
from ._contracts import ContractError
from ._engine import RunSummary, Worker, run_pipeline
from ._model import Arrival, Asset, stable_id
from ._pipeline import Pipeline, PipelineError, load_pipeline
from ._retry import RetryPolicy
from ._triggers import AllOf, AnyOf, Inputs, OnEach, Window, WindowRecords
from .connectors import ConnectorError

__version__ = "0.1.0"

__all__ = [
    "Alert",
    "AlertSink",
    "AllOf",
    "AllowedValues",
    "AnyOf",
    "Arrival",
    "Asset",
    "Check",
    "CheckResult",
    "ConfigError",
    "ConnectorError",
    "ContractError",
    "Expect",
    "ExpectBatch",
    "Freshness",
    "Inputs",
    "LogAlerts",
    "NotNull",
    "OnEach",
    "Pattern",
    "Pipeline",
    "PipelineError",
    "Range",
    "RetryPolicy",
    "RowCount",
    "RunSummary",
    "Settings",
    "Unique",
    "WebhookAlerts",
    "Window",
    "WindowRecords",
    "Worker",
    "__version__",
    "load_pipeline",
    "run_pipeline",
    "stable_id",
]
