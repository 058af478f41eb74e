"""Pinned versions, fixed local endpoints and cache paths for the dev services.

Everything is pinned here, once, so the CLI, tests, demo and CI agree on what they talk to.
"""

from __future__ import annotations

import os
from pathlib import Path

KAFKA_VERSION = "4.1.2"
KAFKA_SCALA_VERSION = "2.13"
LOG4J_SLF4J_VERSION = "2.25.3"
JAEGER_VERSION = "v1.75.0"

HOST = "127.0.0.1"
KAFKA_PORT = 9092
KAFKA_CONTROLLER_PORT = 9093
KAFKA_BOOTSTRAP = f"{HOST}:{KAFKA_PORT}"
# The secured listeners of the same broker (docs/security.md): SASL_SSL with SCRAM users,
# mutual TLS, and OAUTHBEARER checked by Kafka's unsecured JWT validator (dev only).
KAFKA_SCRAM_PORT = 9194
KAFKA_MTLS_PORT = 9195
KAFKA_OAUTH_PORT = 9196
KAFKA_SCRAM_BOOTSTRAP = f"{HOST}:{KAFKA_SCRAM_PORT}"
KAFKA_MTLS_BOOTSTRAP = f"{HOST}:{KAFKA_MTLS_PORT}"
KAFKA_OAUTH_BOOTSTRAP = f"{HOST}:{KAFKA_OAUTH_PORT}"
KAFKA_SCRAM_USER = "streamflow"
KAFKA_SCRAM_PASSWORD = "streamflow-dev-scram"  # a fixed dev value, like POSTGRES_PASSWORD
PKI_STORE_PASSWORD = "streamflow-dev-store"  # the broker's PKCS#12 keystore

# The three-node KRaft cluster (`streamflow services up kafka --brokers 3`): its own ports and
# data, so it runs beside the single broker above. Node n (1-3) takes the n-th of each.
KAFKA_CLUSTER = "kafka-cluster"
KAFKA_CLUSTER_PORTS = (19092, 19093, 19094)
KAFKA_CLUSTER_CONTROLLER_PORTS = (19192, 19193, 19194)
KAFKA_CLUSTER_BOOTSTRAP = ",".join(f"{HOST}:{port}" for port in KAFKA_CLUSTER_PORTS)

JAEGER_QUERY_PORT = 16686
JAEGER_QUERY_GRPC_PORT = 16685
OTLP_GRPC_PORT = 4317
OTLP_HTTP_PORT = 4318
JAEGER_QUERY_URL = f"http://{HOST}:{JAEGER_QUERY_PORT}"
OTLP_HTTP_ENDPOINT = f"http://{HOST}:{OTLP_HTTP_PORT}"
OTLP_GRPC_ENDPOINT = f"http://{HOST}:{OTLP_GRPC_PORT}"

POSTGRES_PORT = 5432
POSTGRES_CLUSTER = "streamflow"
POSTGRES_USER = "streamflow"
POSTGRES_PASSWORD = "streamflow"
POSTGRES_DB = "streamflow"
POSTGRES_DSN = (
    f"postgresql://{POSTGRES_USER}:{POSTGRES_PASSWORD}@{HOST}:{POSTGRES_PORT}/{POSTGRES_DB}"
)
# A role that may log in only over TLS, with scram-sha-256 (docs/security.md).
POSTGRES_TLS_USER = "streamflow_tls"
POSTGRES_TLS_PASSWORD = "streamflow-dev-tls"  # a fixed dev value
POSTGRES_TLS_DSN = f"postgresql://{POSTGRES_TLS_USER}@{HOST}:{POSTGRES_PORT}/{POSTGRES_DB}"
"""Without the password: give it as the connectors' ``password``, ``password_file`` or
``password_env``, and ``sslmode=verify-full`` with ``sslrootcert`` the dev CA."""

SERVICE_NAMES: tuple[str, ...] = ("kafka", "postgres", "jaeger")
"""Start order: Kafka and Postgres are quick; Jaeger may compile for minutes the first time."""


def cache_dir() -> Path:
    """Root of everything downloaded or built (``$STREAMFLOW_CACHE`` overrides it)."""
    override = os.environ.get("STREAMFLOW_CACHE")
    return Path(override) if override else Path.home() / ".cache" / "streamflow"


def run_dir(service: str) -> Path:
    """Runtime state (logs, pid file, data) of one service; created on demand."""
    path = cache_dir() / "run" / service
    path.mkdir(parents=True, exist_ok=True)
    return path
