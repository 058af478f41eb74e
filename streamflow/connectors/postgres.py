"""Deprecated: moved to ``streamflow_connector_sql`` (``connectors/sql/``);
re-exported here with a DeprecationWarning for one release."""

from streamflow._deprecated import alias

globals().update(alias(__name__, "streamflow_connector_sql"))
