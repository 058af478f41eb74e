"""Deprecated: moved to ``streamflow.devservices``."""

from streamflow._deprecated import alias

globals().update(alias(__name__, "streamflow.devservices._base",
                         "streamflow.devservices"))
