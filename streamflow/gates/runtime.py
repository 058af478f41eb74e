"""The gates' runtime, for the engine: holds and the gate decision (``Gatekeeper``), a gated
run's path behind the ``RunRecorder`` Protocol the stage runner implements, and alert delivery.
Users declare checks and alert sinks through :mod:`streamflow.gates` instead."""

from ._alerts import Alerter, alert_sinks_from_env
from ._gatekeeper import GateFailed, Gatekeeper, Hold
from ._lane import RunRecorder, gate_run

__all__ = [
    "Alerter",
    "GateFailed",
    "Gatekeeper",
    "Hold",
    "RunRecorder",
    "alert_sinks_from_env",
    "gate_run",
]
