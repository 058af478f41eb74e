"""The catalog: a rebuildable projection of a namespace's control topics (the run ledger,
dead letters, gate holds, contracts, backfill jobs) into SQL, SQLite by default or PostgreSQL
for a fleet, for the CLIs, an HTTP API and a UI to query. The topics stay the truth.

May import ``streamflow.backfill``, ``streamflow.state``, ``streamflow.transports`` and
``streamflow.model``.
"""

from ._drivers import Driver, PostgresDriver, SqliteDriver
from ._projector import Freshness, Projector, freshness, sources
from ._read import counts, dump, read_runs
from ._rows import Batch, Source
from ._schema import CATALOG_SCHEMA, MIGRATIONS, Migration
from ._store import BEFORE_COMMIT, CatalogStore, Position, SqlCatalog, open_catalog

__all__ = [
    "BEFORE_COMMIT",
    "CATALOG_SCHEMA",
    "MIGRATIONS",
    "Batch",
    "CatalogStore",
    "Driver",
    "Freshness",
    "Migration",
    "Position",
    "PostgresDriver",
    "Projector",
    "Source",
    "SqlCatalog",
    "SqliteDriver",
    "counts",
    "dump",
    "freshness",
    "open_catalog",
    "read_runs",
    "sources",
]
