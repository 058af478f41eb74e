"""Deprecated: this connector moved to ``streamflow_connector_stdout`` (``connectors/stdout/``).

This alias re-exports its public names with a DeprecationWarning, for one release."""

import warnings

from streamflow_connector_stdout import *  # noqa: F403
from streamflow_connector_stdout import __all__ as __all__

warnings.warn(
    "streamflow.connectors.stdout is deprecated and will be removed in the next release; "
    "import streamflow_connector_stdout instead",
    DeprecationWarning,
    stacklevel=2,
)
