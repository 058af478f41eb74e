"""The ``sqlite`` and ``postgres`` connectors: incremental table pollers and idempotent
upserting sinks.

A plugin of the public SDK (``streamflow.connectors``) only. sqlite uses aiosqlite, a core
dependency; postgres needs asyncpg (``pip install 'streamflow[postgres]'``), imported on first
use, so this package imports without it. Both share the codecs and state helpers of
``_codecs``.
"""

from streamflow.connectors import ConnectorSpec

from ._pg import PostgresSinkError, PostgresUnavailable, endpoint
from ._pg_sink import UPSERT_STREAK, PostgresSink, PostgresSinkConfig
from ._pg_source import CursorWentBackwards, PostgresSource, PostgresSourceConfig
from ._sqlite import SqliteSink, SqliteSinkConfig, SqliteSource, SqliteSourceConfig

SQLITE = ConnectorSpec(
    name="sqlite",
    source=SqliteSource,
    sink=SqliteSink,
    source_config=SqliteSourceConfig,
    sink_config=SqliteSinkConfig,
)

POSTGRES = ConnectorSpec(
    name="postgres",
    source=PostgresSource,
    sink=PostgresSink,
    source_config=PostgresSourceConfig,
    sink_config=PostgresSinkConfig,
    extra="postgres",
)

__all__ = [
    "POSTGRES",
    "SQLITE",
    "UPSERT_STREAK",
    "CursorWentBackwards",
    "PostgresSink",
    "PostgresSinkConfig",
    "PostgresSinkError",
    "PostgresSource",
    "PostgresSourceConfig",
    "PostgresUnavailable",
    "SqliteSink",
    "SqliteSinkConfig",
    "SqliteSource",
    "SqliteSourceConfig",
    "endpoint",
]
