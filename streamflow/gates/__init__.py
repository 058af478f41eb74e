"""Quality gates: checks (declared in the model, exported here), holds, the gate decision
behind the :class:`RunRecorder` Protocol that the engine implements, and alerts.

May import ``streamflow.state``, ``streamflow.observability``, ``streamflow.transports``
and ``streamflow.model``; never the engine.
"""

from streamflow.model import Alert, AlertSink, Check, CheckResult

# The check kinds are declared in the model (a stage's checks are part of its declaration);
# this package is their public home.
from streamflow.model._check_kinds import (
    AllowedValues,
    Expect,
    ExpectBatch,
    Freshness,
    NotNull,
    Pattern,
    Range,
    RowCount,
    Unique,
)

from ._alerts import Alerter, LogAlerts, WebhookAlerts, alert_sinks_from_env
from ._gatekeeper import GateFailed, Gatekeeper, Hold
from ._lane import RunRecorder, gate_run

__all__ = [
    "Alert",
    "AlertSink",
    "Alerter",
    "AllowedValues",
    "Check",
    "CheckResult",
    "Expect",
    "ExpectBatch",
    "Freshness",
    "GateFailed",
    "Gatekeeper",
    "Hold",
    "LogAlerts",
    "NotNull",
    "Pattern",
    "Range",
    "RowCount",
    "RunRecorder",
    "Unique",
    "WebhookAlerts",
    "alert_sinks_from_env",
    "gate_run",
]
