"""The connector SDK: the contracts, the registry, and helpers a connector may use.

A connector (built-in or third-party) imports only this package's ``__all__``; the built-ins
live under the top-level ``connectors/`` folder as ``streamflow_connector_<name>`` packages,
registered through the ``streamflow.connectors`` entry-point group and loaded only when a
pipeline names them. ``streamflow.connectors.testing`` is the test kit. This package imports
only the standard library, pydantic (and orjson in the kit) and ``streamflow.errors``, never
the rest of streamflow.
"""

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
    TopicRecord,
    TopicSink,
)
from ._claims import Claims, ClaimTable, LocalClaims
from ._http import Retries, post_with_retries, redact
from ._io import write_atomic
from ._json import duplicate_name, first_duplicate, parse_marked
from ._kafka import KafkaOptions, KafkaSecurity, kafka_client_options, same_cluster
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
    "ClaimTable",
    "Claims",
    "ConnectorContext",
    "ConnectorError",
    "ConnectorSpec",
    "KafkaOptions",
    "KafkaSecurity",
    "LocalClaims",
    "Reject",
    "Retries",
    "Sink",
    "SinkRecord",
    "Source",
    "SourceBatch",
    "SourceRecord",
    "TimeRange",
    "TopicRecord",
    "TopicSink",
    "build",
    "build_sink",
    "build_source",
    "distribution_of",
    "duplicate_name",
    "first_duplicate",
    "kafka_client_options",
    "known_connectors",
    "load_spec",
    "parse_marked",
    "post_with_retries",
    "redact",
    "same_cluster",
    "write_atomic",
]
