"""Stateful triggers: one :class:`TriggerRuntime` Protocol, implemented by the barrier
(``AllOf``/``AnyOf``) and the event-time window.

May import ``streamflow.state``, ``streamflow.transports`` and ``streamflow.model``.
"""

from ._barrier import BarrierGate
from ._protocol import Full, Late, Refused, TriggerRuntime
from ._state import Barrier, PartitionState, Slot
from ._window import WindowGate

__all__ = [
    "Barrier",
    "BarrierGate",
    "Full",
    "Late",
    "PartitionState",
    "Refused",
    "Slot",
    "TriggerRuntime",
    "WindowGate",
]
