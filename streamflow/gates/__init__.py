"""Quality gates: the checks a stage declares and where its alerts go (this package's public
names); holds, the gate decision behind the ``RunRecorder`` Protocol that the engine implements,
and alert delivery are the engine's, in :mod:`streamflow.gates.runtime`.

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

from ._alerts import LogAlerts, WebhookAlerts

__all__ = [
    "Alert",
    "AlertSink",
    "AllowedValues",
    "Check",
    "CheckResult",
    "Expect",
    "ExpectBatch",
    "Freshness",
    "LogAlerts",
    "NotNull",
    "Pattern",
    "Range",
    "RowCount",
    "Unique",
    "WebhookAlerts",
]
