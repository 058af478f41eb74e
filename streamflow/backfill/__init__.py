"""Backfills: the job record on ``<ns>.backfills``, the planner that rebuilds history as
arrivals, and the driver that publishes it slice by slice into the lane.

May import ``streamflow.state``, ``streamflow.transports``, ``streamflow.observability``
and ``streamflow.model``.
"""

from ._driver import Driver, Progress, run_counts, set_status
from ._jobs import (
    BackfillJob,
    Reprocess,
    find_job,
    load_jobs,
    new_id,
    parse_time,
    read_job,
    target_stages,
)
from ._planner import Plan, Planner

__all__ = [
    "BackfillJob",
    "Driver",
    "Plan",
    "Planner",
    "Progress",
    "Reprocess",
    "find_job",
    "load_jobs",
    "new_id",
    "parse_time",
    "read_job",
    "run_counts",
    "set_status",
    "target_stages",
]
