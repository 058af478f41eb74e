"""Deprecated: this connector moved to ``streamflow_connector_schedule`` (``connectors/schedule/``).

This alias re-exports its public names with a DeprecationWarning, for one release."""

import warnings

from streamflow_connector_schedule import *  # noqa: F403
from streamflow_connector_schedule import __all__ as __all__

warnings.warn(
    "streamflow.connectors.schedule is deprecated and will be removed in the next release; "
    "import streamflow_connector_schedule instead",
    DeprecationWarning,
    stacklevel=2,
)
