"""Connector contracts and the registry; built-in connectors live in submodules, loaded lazily."""

from ._api import (
    BackfillSource,
    ConnectorContext,
    ConnectorSpec,
    Reject,
    Sink,
    SinkRecord,
    Source,
    SourceBatch,
    SourceRecord,
    TimeRange,
)
from ._io import write_atomic
from ._registry import (
    GROUP,
    ConnectorError,
    build,
    build_sink,
    build_source,
    distribution_of,
    known_connectors,
    load_spec,
)

__all__ = [
    "GROUP",
    "BackfillSource",
    "ConnectorContext",
    "ConnectorError",
    "ConnectorSpec",
    "Reject",
    "Sink",
    "SinkRecord",
    "Source",
    "SourceBatch",
    "SourceRecord",
    "TimeRange",
    "build",
    "build_sink",
    "build_source",
    "distribution_of",
    "known_connectors",
    "load_spec",
    "write_atomic",
]
