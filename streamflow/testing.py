"""Deprecated alias of ``streamflow.connectors.testing``, kept for one release.

Import ``streamflow.connectors.testing`` instead; this module re-exports it and warns."""

import warnings

from .connectors.testing import *  # noqa: F403
from .connectors.testing import __all__ as __all__

warnings.warn(
    "streamflow.testing is deprecated and will be removed in the next release; "
    "import streamflow.connectors.testing instead",
    DeprecationWarning,
    stacklevel=2,
)
