"""Deprecated: the services CLI is part of ``streamflow.cli``."""

from streamflow._deprecated import alias

globals().update(alias(__name__, "streamflow.cli._services", "streamflow.cli"))
