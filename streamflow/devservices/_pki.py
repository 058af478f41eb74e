"""A local certificate authority for the dev services' TLS listeners, made with ``openssl``.

The secured Kafka listeners and PostgreSQL's TLS serve certificates this CA signed, and the
tests present its client certificates. Beside the good ones it makes what the negative tests
need: a client certificate that expired in 2020 and a second CA nobody trusts, with a client
certificate of its own. Made once into the run directory and reused: a new CA would make the
broker restart and every client's trust go stale.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from streamflow.errors import ServiceError

from ._base import env_with, locked, progress, run
from ._config import HOST, PKI_STORE_PASSWORD, run_dir

_EC = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes")
_DAYS = "3650"
_SERVER_EXT = f"subjectAltName=IP:{HOST},DNS:localhost\nextendedKeyUsage=serverAuth\n"
_CLIENT_EXT = "extendedKeyUsage=clientAuth\n"
# `openssl ca` is the only way openssl 3.0 backdates a certificate (the expired one).
_CA_CONF = """[ca]
default_ca = dev
[dev]
database = index.txt
new_certs_dir = .
serial = serial
default_md = sha256
policy = anything
[anything]
commonName = supplied
"""


@dataclass(frozen=True)
class DevPki:
    """Paths of the dev CA's files (PEM; keys unencrypted, readable by this user only)."""

    root: Path

    @property
    def ca(self) -> Path:
        """The CA every dev service's certificate chains to: a client's ``ssl_cafile``."""
        return self.root / "ca.pem"

    @property
    def server_cert(self) -> Path:
        return self.root / "server.pem"

    @property
    def server_key(self) -> Path:
        return self.root / "server.key"

    @property
    def server_keystore(self) -> Path:
        """The server certificate and key as PKCS#12 for the broker (``PKI_STORE_PASSWORD``)."""
        return self.root / "server.p12"

    @property
    def client_cert(self) -> Path:
        return self.root / "client.pem"

    @property
    def client_key(self) -> Path:
        return self.root / "client.key"

    @property
    def expired_cert(self) -> Path:
        """Signed by the dev CA, valid only in January 2020."""
        return self.root / "expired.pem"

    @property
    def expired_key(self) -> Path:
        return self.root / "expired.key"

    @property
    def untrusted_ca(self) -> Path:
        """A CA no dev service trusts."""
        return self.root / "untrusted-ca.pem"

    @property
    def untrusted_cert(self) -> Path:
        return self.root / "untrusted.pem"

    @property
    def untrusted_key(self) -> Path:
        return self.root / "untrusted.key"

    def complete(self) -> bool:
        return all(p.is_file() for p in (self.ca, self.server_keystore, self.client_cert,
                                         self.expired_cert, self.untrusted_cert))


def dev_pki() -> DevPki:
    """The dev CA and its certificates, made on first use (about a second)."""
    pki = DevPki(run_dir("pki"))
    os.chmod(pki.root, 0o700)  # a folder made before (or by an older version) is tightened too
    if pki.complete():
        return pki
    if shutil.which("openssl") is None:
        raise ServiceError("pki: no `openssl` on PATH (it makes the dev services' "
                           "certificates). Install it, e.g. `apt-get install -y openssl`.")
    with locked(pki.root / ".lock"):
        if not pki.complete():
            progress(f"pki: making a local CA and certificates in {pki.root}")
            _make(pki.root)
    return pki


def _openssl(root: Path, *args: str, env: dict[str, str] | None = None) -> None:
    run(["openssl", *args], f"pki: openssl {args[0]}", cwd=root, env=env)


def _make(root: Path) -> None:
    os.chmod(root, 0o700)
    for f in root.glob("*"):
        if f.name != ".lock":
            f.unlink()
    for ca in ("ca", "untrusted-ca"):
        _openssl(root, "req", "-x509", *_EC, "-keyout", f"{ca}.key", "-out", f"{ca}.pem",
                 "-days", _DAYS, "-subj", f"/CN=StreamFlow dev {ca}",
                 "-addext", "basicConstraints=critical,CA:TRUE",
                 "-addext", "keyUsage=critical,keyCertSign,cRLSign")
    _sign(root, "server", "ca", _SERVER_EXT, "/CN=localhost")
    _sign(root, "client", "ca", _CLIENT_EXT, "/CN=streamflow-client")
    _sign(root, "untrusted", "untrusted-ca", _CLIENT_EXT, "/CN=untrusted-client")
    _expired(root)
    _openssl(root, "pkcs12", "-export", "-in", "server.pem", "-inkey", "server.key",
             "-name", "server", "-out", "server.p12", "-passout", "env:STREAMFLOW_PKI_STORE",
             env=env_with(STREAMFLOW_PKI_STORE=PKI_STORE_PASSWORD))  # not on a command line
    for f in root.glob("*.key"):
        os.chmod(f, 0o600)


def _sign(root: Path, name: str, ca: str, ext: str, subject: str) -> None:
    (root / f"{name}.ext").write_text(ext)
    _openssl(root, "req", *_EC, "-keyout", f"{name}.key", "-out", f"{name}.csr",
             "-subj", subject)
    _openssl(root, "x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.pem", "-CAkey",
             f"{ca}.key", "-CAcreateserial", "-out", f"{name}.pem", "-days", _DAYS,
             "-extfile", f"{name}.ext")


def _expired(root: Path) -> None:
    (root / "ca.conf").write_text(_CA_CONF)
    (root / "index.txt").write_text("")
    (root / "serial").write_text("1000\n")
    _openssl(root, "req", *_EC, "-keyout", "expired.key", "-out", "expired.csr",
             "-subj", "/CN=expired-client")
    _openssl(root, "ca", "-batch", "-config", "ca.conf", "-cert", "ca.pem", "-keyfile",
             "ca.key", "-in", "expired.csr", "-out", "expired.pem", "-notext",
             "-startdate", "20200101000000Z", "-enddate", "20200102000000Z")
