"""Deprecated: this connector moved to ``streamflow_connector_webhook`` (``connectors/webhook/``).

This alias re-exports its public names with a DeprecationWarning, for one release."""

import warnings

from streamflow_connector_webhook import *  # noqa: F403
from streamflow_connector_webhook import __all__ as __all__

from streamflow.connectors import Retries as Retries  # re-exported here before
from streamflow.connectors import post_with_retries as post_with_retries
from streamflow.connectors import redact as redact

warnings.warn(
    "streamflow.connectors.webhook is deprecated and will be removed in the next release; "
    "import streamflow_connector_webhook instead",
    DeprecationWarning,
    stacklevel=2,
)
