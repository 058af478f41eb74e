"""Deprecated: this connector moved to ``streamflow_connector_kafka`` (``connectors/kafka/``).

This alias re-exports its public names with a DeprecationWarning, for one release."""

import warnings

from streamflow_connector_kafka import *  # noqa: F403
from streamflow_connector_kafka import __all__ as __all__

warnings.warn(
    "streamflow.connectors.kafka is deprecated and will be removed in the next release; "
    "import streamflow_connector_kafka instead",
    DeprecationWarning,
    stacklevel=2,
)
