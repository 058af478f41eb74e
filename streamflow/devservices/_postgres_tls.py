"""TLS for the dev PostgreSQL cluster: the dev CA's certificate, and a role that may only log in
over TLS with ``scram-sha-256``.

The ``streamflow`` role keeps its plain access (the test suite uses it). ``streamflow_tls``
is refused without TLS, so a test that logs in as it proves the connection was encrypted and
verified (``sslmode=verify-full`` against the dev CA). Changing these settings needs only a
reload, never a restart, so a warm machine picks them up on ``services up``.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path

from streamflow.errors import ServiceError

from ._base import progress
from ._config import HOST, POSTGRES_TLS_PASSWORD, POSTGRES_TLS_USER
from ._pki import DevPki

_BEGIN = "# streamflow devservices: TLS-only role (begin)\n"
_END = "# streamflow devservices: TLS-only role (end)\n"


def _hba_block() -> str:
    return (f"{_BEGIN}hostssl all {POSTGRES_TLS_USER} {HOST}/32 scram-sha-256\n"
            f"hostnossl all {POSTGRES_TLS_USER} all reject\n{_END}")


def _conf(tls_dir: Path) -> str:
    return (f"ssl = on\nssl_cert_file = '{tls_dir / 'server.pem'}'\n"
            f"ssl_key_file = '{tls_dir / 'server.key'}'\nssl_ca_file = '{tls_dir / 'ca.pem'}'\n"
            "password_encryption = 'scram-sha-256'\n")


def ensure_tls(conf_dir: Path, pki: DevPki, reload: Callable[[], None]) -> bool:
    """Install the certificates, the settings and the pg_hba rules where they differ; reload
    if anything changed. Returns whether it did."""
    try:
        changed = _install(conf_dir, pki)
    except OSError as e:
        raise ServiceError(f"postgres: cannot install TLS settings in {conf_dir} "
                           f"({e.strerror or e}); run `streamflow services up postgres` as the "
                           "user that owns the cluster's configuration (root on Debian)") from e
    if changed:
        progress("postgres: TLS (dev CA) and the TLS-only role's pg_hba rules installed; "
                 "reloading")
        reload()
    return changed


def _install(conf_dir: Path, pki: DevPki) -> bool:
    tls_dir = conf_dir / "tls"
    tls_dir.mkdir(mode=0o700, exist_ok=True)
    changed = False
    for src, name in ((pki.server_cert, "server.pem"), (pki.server_key, "server.key"),
                      (pki.ca, "ca.pem")):
        changed |= _put(tls_dir / name, src.read_bytes())
    changed |= _put(conf_dir / "conf.d" / "streamflow-tls.conf", _conf(tls_dir).encode())
    hba = conf_dir / "pg_hba.conf"
    text = hba.read_text()
    if _hba_block() not in text:
        if _BEGIN in text and _END in text:  # an older block: replaced
            text = text[:text.index(_BEGIN)] + text[text.index(_END) + len(_END):]
        changed |= _put(hba, (_hba_block() + text).encode())  # first match wins: on top
    if changed:
        _own(tls_dir)
    return changed


def _put(path: Path, content: bytes) -> bool:
    if path.exists() and path.read_bytes() == content:
        return False
    path.write_bytes(content)
    return True


def _own(tls_dir: Path) -> None:
    """The server refuses a key others can read; it must belong to the server's user."""
    user = "postgres" if os.geteuid() == 0 and shutil.which("runuser") else None
    for f in (tls_dir, *tls_dir.iterdir()):
        os.chmod(f, 0o700 if f.is_dir() else 0o600)
        if user:
            shutil.chown(f, user, user)


def role_sql() -> str:
    """Create or reset the TLS-only role (the password is a fixed dev value)."""
    return ("DO $$ BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = "
            f"'{POSTGRES_TLS_USER}') THEN CREATE ROLE {POSTGRES_TLS_USER} LOGIN; END IF; "
            f"ALTER ROLE {POSTGRES_TLS_USER} LOGIN PASSWORD '{POSTGRES_TLS_PASSWORD}'; "
            f"GRANT ALL ON SCHEMA public TO {POSTGRES_TLS_USER}; END $$;")
