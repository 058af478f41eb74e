"""How the PostgreSQL connectors authenticate and encrypt: a password kept out of the DSN (a
setting, a file or an environment variable) and libpq's ``sslmode`` with a CA file.

The password is read again for each new connection, so a rotated file or variable is used
from the next connection on, without a restart. It is a ``SecretStr``: never in a repr, a log
or an error.
"""

from __future__ import annotations

import os
import ssl
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, Field, SecretStr, model_validator

from streamflow.connectors import ConnectorError

SslMode = Literal["disable", "allow", "prefer", "require", "verify-ca", "verify-full"]
_TLS = ("require", "verify-ca", "verify-full")  # the modes that never fall back to plain


class PgSecurity(BaseModel):
    """Fields every PostgreSQL connector's config has beside its ``dsn``."""

    password: SecretStr | None = Field(
        default=None, description="the role's password, if not in the DSN (prefer "
                                  "password_file)")
    password_file: Path | None = Field(
        default=None, description="a file whose content is the password (a mounted "
                                  "secret); read for each new connection")
    password_env: str | None = Field(
        default=None, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$",
        description="an environment variable holding the password; read for each new "
                    "connection")
    sslmode: SslMode | None = Field(
        default=None, description="libpq's sslmode: verify-full checks the server's "
                                  "certificate and name; default: the DSN's, else prefer")
    sslrootcert: Path | None = Field(
        default=None, description="CA (PEM) that signed the server's certificate, for "
                                  "verify-ca and verify-full (with require, as in libpq, it "
                                  "makes require check it like verify-ca); default: the "
                                  "system's CAs")
    sslcert: Path | None = Field(
        default=None, description="client certificate (PEM), if the server asks for one")
    sslkey: Path | None = Field(default=None, description="the client certificate's key (PEM)")

    @model_validator(mode="after")
    def _coherent(self) -> PgSecurity:
        given = [n for n in ("password", "password_file", "password_env")
                 if getattr(self, n) is not None]
        dsn = getattr(self, "dsn", "")
        if "://" in dsn and urlsplit(dsn).password is not None:
            given.append("a password in dsn")
        if len(given) > 1:
            raise ValueError(f"{' and '.join(given)} are all set: keep one")
        if (self.sslcert is None) != (self.sslkey is None):
            raise ValueError("sslcert and sslkey go together")
        if self.sslmode not in _TLS and (self.sslrootcert or self.sslcert):
            raise ValueError(f"sslrootcert/sslcert need sslmode require, verify-ca or "
                             f"verify-full (sslmode is {self.sslmode or 'unset'}: they would "
                             "be ignored)")
        for name in ("password_file", "sslrootcert", "sslcert", "sslkey"):
            path = getattr(self, name)
            if path is not None and not path.is_file():
                raise ValueError(f"{name}: no such file: {path}")
        return self

    def connect_options(self) -> dict[str, Any]:
        """asyncpg ``connect``/``create_pool`` keyword arguments beside the DSN."""
        out: dict[str, Any] = {}
        if self.password is not None or self.password_file or self.password_env:
            out["password"] = self._password
        if self.sslmode in _TLS and (self.sslmode != "require" or self.sslrootcert
                                     or self.sslcert):
            out["ssl"] = self._context()
        elif self.sslmode is not None:
            out["ssl"] = self.sslmode
        return out

    def _password(self) -> str:
        if self.password is not None:
            return self.password.get_secret_value()
        if self.password_file is not None:
            try:
                return self.password_file.read_text().rstrip("\r\n")
            except OSError as e:
                raise ConnectorError(f"postgres password_file {self.password_file}: cannot "
                                     f"read it ({e.strerror or e})") from None
        value = os.environ.get(self.password_env or "")
        if value is None:
            raise ConnectorError(f"postgres password_env: ${self.password_env} is not set")
        return value

    def _context(self) -> ssl.SSLContext:
        """libpq's rules: ``require`` checks nothing unless ``sslrootcert`` is given, and
        then checks the chain like ``verify-ca``; the client certificate goes in any mode."""
        try:
            ctx = ssl.create_default_context(
                cafile=str(self.sslrootcert) if self.sslrootcert else None)
            ctx.check_hostname = self.sslmode == "verify-full"
            if self.sslmode == "require" and self.sslrootcert is None:
                ctx.verify_mode = ssl.CERT_NONE
            if self.sslcert is not None:
                ctx.load_cert_chain(self.sslcert, self.sslkey)
        except (OSError, ssl.SSLError) as e:
            raise ConnectorError(f"postgres sslrootcert/sslcert/sslkey: cannot load them "
                                 f"({type(e).__name__}: {e})") from None
        return ctx


def refused(e: BaseException, where: str, sslmode: str | None) -> str | None:
    """What to check when the server refused us, or None if ``e`` is no such refusal."""
    if isinstance(e, ssl.SSLCertVerificationError):
        return (f"PostgreSQL at {where} (sslmode {sslmode}): the server's certificate is not "
                f"trusted ({e.verify_message}): check that sslrootcert is the CA that signed "
                "it and that it names the host in dsn")
    name = type(e).__name__
    if name in ("InvalidPasswordError", "InvalidAuthorizationSpecificationError"):
        return (f"PostgreSQL at {where} refused the login ({name}: {e}): check the user in "
                "dsn, the password (password, password_file or password_env) and the "
                "server's pg_hba.conf rules (some allow a role only over TLS: sslmode)")
    return None
