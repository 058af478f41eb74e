"""Deprecated: this connector moved to ``streamflow_connector_files`` (``connectors/files/``).

This alias re-exports its public names with a DeprecationWarning, for one release."""

import warnings

from streamflow_connector_files import *  # noqa: F403
from streamflow_connector_files import __all__ as __all__

warnings.warn(
    "streamflow.connectors.files is deprecated and will be removed in the next release; "
    "import streamflow_connector_files instead",
    DeprecationWarning,
    stacklevel=2,
)
