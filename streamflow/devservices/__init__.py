"""Local dev services (Kafka, Jaeger, PostgreSQL) on 127.0.0.1 without Docker.

Tests, the demo, benchmarks and CI all need the same real services; ``up`` builds/downloads them
once into ``~/.cache/streamflow`` and reuses anything of ours that is already healthy.

Beside the stack, used only by the CLI and tests: it may import ``streamflow.observability``
(its HTTP port helpers), the connector SDK (the Kafka client options every client is built
from) and ``streamflow.errors``, nothing else of StreamFlow.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from types import ModuleType

from streamflow.devservices import _jaeger as jaeger
from streamflow.devservices import _kafka as kafka
from streamflow.devservices import _kafka_cluster as kafka_cluster
from streamflow.devservices import _postgres as postgres
from streamflow.errors import ServiceError

from ._base import ServiceStatus, check_port_free
from ._config import (
    JAEGER_QUERY_URL,
    JAEGER_VERSION,
    KAFKA_BOOTSTRAP,
    KAFKA_CLUSTER,
    KAFKA_CLUSTER_BOOTSTRAP,
    KAFKA_MTLS_BOOTSTRAP,
    KAFKA_OAUTH_BOOTSTRAP,
    KAFKA_SCRAM_BOOTSTRAP,
    KAFKA_SCRAM_PASSWORD,
    KAFKA_SCRAM_USER,
    KAFKA_VERSION,
    OTLP_GRPC_ENDPOINT,
    OTLP_HTTP_ENDPOINT,
    POSTGRES_DSN,
    POSTGRES_TLS_DSN,
    POSTGRES_TLS_PASSWORD,
    POSTGRES_TLS_USER,
    SERVICE_NAMES,
)
from ._kafka import delete_topics
from ._pki import DevPki, dev_pki

__all__ = [
    "JAEGER_QUERY_URL",
    "JAEGER_VERSION",
    "KAFKA_BOOTSTRAP",
    "KAFKA_CLUSTER",
    "KAFKA_CLUSTER_BOOTSTRAP",
    "KAFKA_MTLS_BOOTSTRAP",
    "KAFKA_OAUTH_BOOTSTRAP",
    "KAFKA_SCRAM_BOOTSTRAP",
    "KAFKA_SCRAM_PASSWORD",
    "KAFKA_SCRAM_USER",
    "KAFKA_VERSION",
    "OTLP_GRPC_ENDPOINT",
    "OTLP_HTTP_ENDPOINT",
    "POSTGRES_DSN",
    "POSTGRES_TLS_DSN",
    "POSTGRES_TLS_PASSWORD",
    "POSTGRES_TLS_USER",
    "SERVICE_NAMES",
    "DevPki",
    "ServiceError",
    "ServiceStatus",
    "check_port_free",
    "delete_topics",
    "dev_pki",
    "down",
    "reset",
    "status",
    "up",
]

_MODULES: dict[str, ModuleType] = {"kafka": kafka, "postgres": postgres, "jaeger": jaeger,
                                   KAFKA_CLUSTER: kafka_cluster}
_KNOWN = (KAFKA_CLUSTER, *SERVICE_NAMES)
"""The three-node cluster is asked for by name (``kafka --brokers 3`` on the CLI), never by
default: it is for the replication tests, and takes three JVMs."""


def _resolve(names: Sequence[str] | None) -> list[str]:
    """Requested names in canonical start order; unknown names are a ServiceError."""
    if isinstance(names, str):
        names = [names]
    if not names:
        return list(SERVICE_NAMES)
    unknown = sorted(set(names) - set(_KNOWN))
    if unknown:
        raise ServiceError(
            f"unknown service(s): {', '.join(unknown)}; choose from {', '.join(_KNOWN)}"
        )
    return [n for n in _KNOWN if n in names]


def _call(name: str, fn: str) -> Callable[[], object]:
    func: Callable[[], object] = getattr(_MODULES[name], fn)
    return func


def up(names: Sequence[str] | None = None) -> dict[str, ServiceStatus]:
    """Start (or reuse) the named services; all are attempted, failures raised together."""
    result: dict[str, ServiceStatus] = {}
    errors: list[str] = []
    for name in _resolve(names):
        try:
            st = _call(name, "up")()
        except ServiceError as exc:
            errors.append(str(exc))
            continue
        assert isinstance(st, ServiceStatus)
        result[name] = st
    if errors:
        raise ServiceError("\n".join(errors))
    return result


def status(names: Sequence[str] | None = None) -> dict[str, ServiceStatus]:
    """Report the named services without starting anything."""
    out: dict[str, ServiceStatus] = {}
    for name in _resolve(names):
        st = _call(name, "status")()
        assert isinstance(st, ServiceStatus)
        out[name] = st
    return out


def down(names: Sequence[str] | None = None) -> None:
    """Stop the named services that we started (reverse start order)."""
    errors: list[str] = []
    for name in reversed(_resolve(names)):
        try:
            _call(name, "down")()
        except ServiceError as exc:
            errors.append(str(exc))
    if errors:
        raise ServiceError("\n".join(errors))


RESETTABLE = ("kafka", KAFKA_CLUSTER)


def reset(names: Sequence[str] | None = None) -> None:
    """Stop the named services and delete their data (only Kafka keeps any worth wiping)."""
    wanted = _resolve(names) if names else ["kafka"]
    refused = [n for n in wanted if n not in RESETTABLE]
    if refused:
        raise ServiceError(
            f"cannot reset {', '.join(refused)}: only {', '.join(RESETTABLE)} keeps data "
            "worth wiping (Jaeger keeps traces in memory; PostgreSQL tests use their own tables)"
        )
    for name in wanted:
        _call(name, "reset")()
