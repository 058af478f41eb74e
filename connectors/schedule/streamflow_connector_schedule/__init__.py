"""The ``interval`` and ``cron`` tick sources: one record per scheduled instant.

A plugin of the public SDK (``streamflow.connectors``) only. ``cron`` needs croniter
(``pip install 'streamflow[cron]'``), imported when a cron source is built or set up.
"""

from ._ticks import (
    CRON,
    INTERVAL,
    CronConfig,
    CronSource,
    IntervalConfig,
    IntervalSource,
    cron_tick_at_or_after,
    interval_tick_at_or_after,
    validate_cron,
)

__all__ = [
    "CRON",
    "INTERVAL",
    "CronConfig",
    "CronSource",
    "IntervalConfig",
    "IntervalSource",
    "cron_tick_at_or_after",
    "interval_tick_at_or_after",
    "validate_cron",
]
