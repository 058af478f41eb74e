"""Deprecated: this connector moved to ``streamflow_connector_sql`` (``connectors/sql/``).

This alias re-exports its public names with a DeprecationWarning, for one release."""

import warnings

from streamflow_connector_sql import *  # noqa: F403
from streamflow_connector_sql import __all__ as __all__

warnings.warn(
    "streamflow.connectors.sqlite is deprecated and will be removed in the next release; "
    "import streamflow_connector_sql instead",
    DeprecationWarning,
    stacklevel=2,
)
