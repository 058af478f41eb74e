"""The worker: consumer loops, source and sink runners, stage execution, run outcomes,
drain. It wires everything below it and implements the gates' ``RunRecorder``.

May import every package below it in the layering (``docs/architecture.md``); never
``streamflow.cli`` or ``streamflow.ops``, and it needs nothing of ``streamflow.backfill``.
"""

from ._worker import RunSummary, Worker, run_pipeline

__all__ = [
    "RunSummary",
    "Worker",
    "run_pipeline",
]
