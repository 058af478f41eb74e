"""StreamFlow: event-driven streaming orchestration.

Declare assets with pydantic contracts, sources, stages and sinks on a :class:`Pipeline`, then
run it with ``streamflow run module:pipeline`` or :func:`run_pipeline`.
"""

from ._config import ConfigError, Settings
from ._engine import RunSummary, Worker, run_pipeline
from ._model import Arrival, Asset, stable_id
from ._pipeline import Pipeline, PipelineError, load_pipeline
from ._retry import RetryPolicy
from ._triggers import AllOf, AnyOf, Inputs, OnEach, Window, WindowRecords
from .connectors import ConnectorError

__version__ = "0.1.0"

__all__ = [
    "AllOf",
    "AnyOf",
    "Arrival",
    "Asset",
    "ConfigError",
    "ConnectorError",
    "Inputs",
    "OnEach",
    "Pipeline",
    "PipelineError",
    "RetryPolicy",
    "RunSummary",
    "Settings",
    "Window",
    "WindowRecords",
    "Worker",
    "__version__",
    "load_pipeline",
    "run_pipeline",
    "stable_id",
]
