"""Deprecated: moved to ``streamflow.connectors.testing``; re-exported here with a
DeprecationWarning for one release."""

from streamflow._deprecated import alias

globals().update(alias(__name__, "streamflow.connectors.testing"))
