"""How StreamFlow connects to Kafka: the one place every Kafka client's options are built.

The transport, the CLIs, the local services, the benchmarks and the ``kafka`` connector all
start from ``KafkaSecurity.client_options``, so a TLS or SASL cluster is configured once. It
lives in the SDK because connectors may import nothing else; it needs only the standard
library (aiokafka is looked up only to check an OAUTHBEARER token provider).
"""

from __future__ import annotations

import importlib
import ssl
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, model_validator

from streamflow.errors import ConfigError

SecurityProtocol = Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"]
SaslMechanism = Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512", "OAUTHBEARER"]
_TLS = ("SSL", "SASL_SSL")
_SASL = ("SASL_PLAINTEXT", "SASL_SSL")


class KafkaOptions(dict[str, Any]):
    """aiokafka keyword arguments; printing them never shows the SASL password."""

    def __repr__(self) -> str:
        shown = {k: ("**********" if k == "sasl_plain_password" and v is not None else v)
                 for k, v in self.items()}
        return f"KafkaOptions({shown!r})"

    __str__ = __repr__


class KafkaSecurity(BaseModel):
    """Encryption and authentication towards one Kafka cluster (PLAINTEXT by default).

    In ``Settings`` each field is ``kafka_<field>`` (``STREAMFLOW_KAFKA_<FIELD>``); a
    connector names them in its ``security`` block. Secrets are ``SecretStr``.
    """

    # Inputs stay out of validation errors: they may hold a password.
    model_config = ConfigDict(extra="forbid", frozen=True, hide_input_in_errors=True)
    SECRETS: ClassVar[tuple[str, ...]] = ("ssl_key_password", "sasl_password")
    """Also accepted as ``<name>_file``: a path whose content is the secret."""

    security_protocol: SecurityProtocol = Field(
        default="PLAINTEXT", description="PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL")
    ssl_cafile: Path | None = Field(
        default=None, description="CA bundle (PEM) that signs the brokers' certificates; "
                                  "unset: the system's trusted CAs")
    ssl_certfile: Path | None = Field(
        default=None, description="client certificate (PEM), mutual TLS")
    ssl_keyfile: Path | None = Field(
        default=None, description="the client certificate's key (PEM)")
    ssl_key_password: SecretStr | None = Field(
        default=None, description="password of an encrypted key (or ssl_key_password_file)")
    ssl_check_hostname: bool = Field(
        default=True, description="check that the broker's certificate names the host dialled")
    sasl_mechanism: SaslMechanism | None = Field(
        default=None, description="PLAIN, SCRAM-SHA-256, SCRAM-SHA-512 or OAUTHBEARER")
    sasl_username: str | None = Field(default=None, description="PLAIN and SCRAM user")
    sasl_password: SecretStr | None = Field(
        default=None, description="PLAIN and SCRAM password (or sasl_password_file)")
    sasl_oauth_token_provider: str | None = Field(
        default=None, pattern=r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$",
        description="OAUTHBEARER: `module:attr`, an aiokafka AbstractTokenProvider (a class "
                    "is instantiated without arguments)")

    @model_validator(mode="before")
    @classmethod
    def _secret_files(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        data = dict(data)
        for name in cls.SECRETS:
            path = data.pop(f"{name}_file", None)
            if path in (None, ""):
                continue
            if data.get(name) not in (None, ""):
                raise ValueError(f"{name} and {name}_file are both set: keep one")
            data[name] = read_secret_file(f"{name}_file", Path(path))
        return data

    @model_validator(mode="after")
    def _coherent(self) -> KafkaSecurity:
        problems = _problems(self)
        if problems:
            raise ValueError("; ".join(problems))
        return self

    @property
    def tls(self) -> bool:
        return self.security_protocol in _TLS

    def ssl_context(self) -> ssl.SSLContext:
        """A client context: the CA file (else the system's CAs), the client certificate for
        mutual TLS, hostname verification unless ``ssl_check_hostname`` is off."""
        try:
            ctx = ssl.create_default_context(
                cafile=str(self.ssl_cafile) if self.ssl_cafile else None)
        except (OSError, ssl.SSLError) as e:
            raise ConfigError(f"kafka ssl_cafile {self.ssl_cafile}: not a readable PEM CA "
                              f"bundle ({e})") from e
        ctx.check_hostname = self.ssl_check_hostname
        if self.ssl_certfile is not None:
            password = (self.ssl_key_password.get_secret_value()
                        if self.ssl_key_password else None)
            try:
                ctx.load_cert_chain(self.ssl_certfile, self.ssl_keyfile, password)
            except (OSError, ssl.SSLError) as e:
                raise ConfigError(
                    f"kafka ssl_certfile {self.ssl_certfile} / ssl_keyfile {self.ssl_keyfile}: "
                    "cannot load the client certificate (a PEM certificate and its key; "
                    f"is ssl_key_password right?): {type(e).__name__}") from None
        return ctx

    def client_options(self, bootstrap: str) -> KafkaOptions:
        """Keyword arguments for any aiokafka client (producer, consumer, admin) of this
        cluster; add the client's own options beside them."""
        opts = KafkaOptions(bootstrap_servers=bootstrap,
                            security_protocol=self.security_protocol)
        if self.tls:
            opts["ssl_context"] = self.ssl_context()
        if self.security_protocol in _SASL:
            opts["sasl_mechanism"] = self.sasl_mechanism
            if self.sasl_mechanism == "OAUTHBEARER":
                opts["sasl_oauth_token_provider"] = load_token_provider(
                    self.sasl_oauth_token_provider or "")
            else:
                opts["sasl_plain_username"] = self.sasl_username
                opts["sasl_plain_password"] = (self.sasl_password.get_secret_value()
                                               if self.sasl_password else None)
        return opts


def kafka_client_options(bootstrap: str, security: KafkaSecurity | None = None) -> KafkaOptions:
    """``security.client_options(bootstrap)``; PLAINTEXT when ``security`` is None."""
    return (security or KafkaSecurity()).client_options(bootstrap)


def same_cluster(a: str, b: str) -> bool:
    """Two bootstrap lists name one cluster when they share a ``host:port`` (as written)."""
    def hosts(s: str) -> set[str]:
        return {h.strip().lower() for h in s.split(",") if h.strip()}
    return bool(hosts(a) & hosts(b))


def read_secret_file(setting: str, path: Path) -> SecretStr:
    """A secret from a file (a mounted secret), without its trailing newline."""
    try:
        return SecretStr(path.read_text().rstrip("\r\n"))
    except OSError as e:
        raise ValueError(f"{setting}: cannot read {path}: {e.strerror or e}") from None


def load_token_provider(spec: str) -> Any:
    """Import ``module:attr`` (only now: most workers never need it); a class is instantiated."""
    module_name, _, attr = spec.partition(":")
    try:
        obj: Any = importlib.import_module(module_name)
        for part in attr.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError) as e:
        raise ConfigError(f"kafka sasl_oauth_token_provider {spec!r}: cannot import it "
                          f"({type(e).__name__}: {e})") from e
    if isinstance(obj, type):
        obj = obj()
    # aiokafka is the transport's dependency, not the SDK's: imported here, when a token
    # provider is asked for, to give a clear error before a connection does.
    base = importlib.import_module("aiokafka.abc").AbstractTokenProvider
    if not isinstance(obj, base):
        raise ConfigError(f"kafka sasl_oauth_token_provider {spec!r} is a "
                          f"{type(obj).__name__}, not an aiokafka.abc.AbstractTokenProvider "
                          "(a class with `async def token(self) -> str`)")
    return obj


def _problems(s: KafkaSecurity) -> list[str]:
    """Combinations that cannot work or would silently be ignored, each said plainly."""
    p, m = s.security_protocol, s.sasl_mechanism
    out: list[str] = []
    if p in _SASL and m is None:
        out.append(f"security_protocol {p} needs sasl_mechanism (PLAIN, SCRAM-SHA-256, "
                   "SCRAM-SHA-512 or OAUTHBEARER)")
    if p not in _SASL and (m or s.sasl_username or s.sasl_password
                           or s.sasl_oauth_token_provider):
        out.append(f"sasl_* settings are given but security_protocol is {p}: use "
                   "SASL_SSL (or SASL_PLAINTEXT)")
    if m in ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512") and not (
            s.sasl_username and s.sasl_password):
        out.append(f"sasl_mechanism {m} needs sasl_username and sasl_password")
    if m == "OAUTHBEARER" and not s.sasl_oauth_token_provider:
        out.append("sasl_mechanism OAUTHBEARER needs sasl_oauth_token_provider (module:attr)")
    tls_set = [n for n in ("ssl_cafile", "ssl_certfile", "ssl_keyfile", "ssl_key_password")
               if getattr(s, n) is not None]
    if p not in _TLS and tls_set:
        out.append(f"{', '.join(tls_set)} given but security_protocol is {p}: use SSL or "
                   "SASL_SSL")
    if (s.ssl_keyfile or s.ssl_key_password) and s.ssl_certfile is None:
        out.append("ssl_keyfile and ssl_key_password need ssl_certfile (the client "
                   "certificate)")
    for name in ("ssl_cafile", "ssl_certfile", "ssl_keyfile"):
        path = getattr(s, name)
        if path is not None and not path.is_file():
            out.append(f"{name}: no such file: {path}")
    return out
