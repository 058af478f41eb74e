"""Deprecated: the local development services moved to :mod:`streamflow.devservices`; the old
names and submodules resolve for one release, with a ``DeprecationWarning``."""

from typing import Any

from streamflow._deprecated import moved

_NAMES = ("JAEGER_QUERY_URL", "JAEGER_VERSION", "KAFKA_BOOTSTRAP", "KAFKA_VERSION",
          "OTLP_GRPC_ENDPOINT", "OTLP_HTTP_ENDPOINT", "POSTGRES_DSN", "SERVICE_NAMES",
          "ServiceError", "ServiceStatus", "check_port_free", "delete_topics", "down", "reset",
          "status", "up")


_MOVED = {**dict.fromkeys(_NAMES, "streamflow.devservices"),
          "port_holder": "streamflow.observability", "add_cli": "streamflow.cli._services"}


def __getattr__(name: str) -> Any:
    return moved(__name__, name, _MOVED)
