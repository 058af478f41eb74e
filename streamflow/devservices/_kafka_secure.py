"""The dev broker's secured listeners, beside its PLAINTEXT one (which the test suite uses).

Always on, loopback only: SASL_SSL with SCRAM users, SSL that requires a client certificate
(mutual TLS), and SASL_PLAINTEXT with OAUTHBEARER checked by Kafka's *unsecured* JWT validator
(it accepts any unsigned token: a stand-in for an identity provider, never for production).
Certificates come from the dev CA (``_pki``). SCRAM users live in the cluster metadata, so
they are added after the broker starts, idempotently, to storage however old.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import tempfile
from pathlib import Path

from streamflow.errors import ServiceError

from ._base import progress
from ._config import (
    HOST,
    KAFKA_BOOTSTRAP,
    KAFKA_MTLS_PORT,
    KAFKA_OAUTH_PORT,
    KAFKA_SCRAM_PASSWORD,
    KAFKA_SCRAM_PORT,
    KAFKA_SCRAM_USER,
    PKI_STORE_PASSWORD,
)
from ._pki import DevPki

SECURE_PORTS = (KAFKA_SCRAM_PORT, KAFKA_MTLS_PORT, KAFKA_OAUTH_PORT)
SCRAM_MECHANISMS = ("SCRAM-SHA-512",)
"""One mechanism: ConfigCommand refuses two credentials of one user in one request."""
_LISTENERS = {"SCRAM": ("SASL_SSL", KAFKA_SCRAM_PORT), "MTLS": ("SSL", KAFKA_MTLS_PORT),
              "OAUTH": ("SASL_PLAINTEXT", KAFKA_OAUTH_PORT)}
_SCRAM_MODULE = "org.apache.kafka.common.security.scram.ScramLoginModule"
_OAUTH_MODULE = "org.apache.kafka.common.security.oauthbearer.OAuthBearerLoginModule"


def listeners() -> str:
    """``NAME://host:port`` of each secured listener, to append to ``listeners``."""
    return ",".join(f"{name}://{HOST}:{port}" for name, (_, port) in _LISTENERS.items())


def protocol_map() -> str:
    return ",".join(f"{name}:{proto}" for name, (proto, _) in _LISTENERS.items())


def properties(pki: DevPki) -> str:
    """The broker settings of the secured listeners (TLS material, mechanisms, JAAS). A
    comment carries the certificates' digest: new ones change the file, so ``up`` restarts."""
    digest = hashlib.sha256(pki.ca.read_bytes() + pki.server_keystore.read_bytes()).hexdigest()
    scram = "".join(
        f"listener.name.scram.{m.lower()}.sasl.jaas.config={_SCRAM_MODULE} required;\n"
        for m in SCRAM_MECHANISMS)
    return f"""# dev CA and keystore sha256 {digest[:16]}
ssl.keystore.type=PKCS12
ssl.keystore.location={pki.server_keystore}
ssl.keystore.password={PKI_STORE_PASSWORD}
ssl.key.password={PKI_STORE_PASSWORD}
ssl.truststore.type=PEM
ssl.truststore.location={pki.ca}
listener.name.scram.sasl.enabled.mechanisms={",".join(SCRAM_MECHANISMS)}
{scram}listener.name.mtls.ssl.client.auth=required
listener.name.oauth.sasl.enabled.mechanisms=OAUTHBEARER
listener.name.oauth.oauthbearer.sasl.jaas.config={_OAUTH_MODULE} required \
unsecuredLoginStringClaim_sub="broker";
"""


def _users_stamp(run_dir: Path) -> Path:
    return run_dir / "scram-users.stamp"


def _wanted_stamp(meta: Path) -> str:
    """Which storage and which users: a new format or a new password adds them again."""
    ident = meta.read_text() if meta.exists() else ""
    text = f"{ident}|{KAFKA_SCRAM_USER}|{KAFKA_SCRAM_PASSWORD}|{SCRAM_MECHANISMS}"
    return hashlib.sha256(text.encode()).hexdigest()


def ensure_scram_users(java: list[str], run_dir: Path, meta: Path) -> None:
    """Add (or reset) the dev SCRAM user through the running broker's PLAINTEXT listener.

    ``ConfigCommand --alter`` is idempotent; a stamp keyed on the storage's identity skips
    the JVM start when nothing changed. The password travels in a 0600 file, never on a
    command line or in an error.
    """
    stamp = _users_stamp(run_dir)
    wanted = _wanted_stamp(meta)
    if stamp.exists() and stamp.read_text().strip() == wanted:
        return
    progress(f"kafka: adding SCRAM user {KAFKA_SCRAM_USER!r} ({', '.join(SCRAM_MECHANISMS)})")
    fd, path = tempfile.mkstemp(prefix="scram-", suffix=".properties", dir=run_dir)
    try:
        with os.fdopen(fd, "w") as fh:
            for m in SCRAM_MECHANISMS:
                fh.write(f"{m}=password={KAFKA_SCRAM_PASSWORD}\n")  # no brackets in a file
        result = subprocess.run(
            [*java, "kafka.admin.ConfigCommand", "--bootstrap-server", KAFKA_BOOTSTRAP,
             "--alter", "--entity-type", "users", "--entity-name", KAFKA_SCRAM_USER,
             "--add-config-file", path],
            cwd=run_dir, stdin=subprocess.DEVNULL, capture_output=True, text=True,
            check=False, timeout=120)
    except subprocess.TimeoutExpired:
        raise ServiceError(f"kafka: adding SCRAM user {KAFKA_SCRAM_USER!r} took over 120 s "
                           "(kafka.admin.ConfigCommand); is the broker overloaded?") from None
    finally:
        os.unlink(path)
    if result.returncode != 0:
        tail = "\n".join((result.stdout + result.stderr).splitlines()[-15:])
        raise ServiceError(f"kafka: could not add SCRAM user {KAFKA_SCRAM_USER!r} "
                           f"(kafka.admin.ConfigCommand exit {result.returncode}):\n"
                           f"{tail.replace(KAFKA_SCRAM_PASSWORD, '**********')}")
    stamp.write_text(wanted + "\n")
