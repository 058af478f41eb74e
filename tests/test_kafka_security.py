"""The one builder of Kafka client options: every protocol and mechanism, TLS files made by a
real CA (openssl), secrets from files, and the errors a wrong combination gets."""

from __future__ import annotations

import ast
import ssl
import subprocess
from pathlib import Path
from typing import Any

import pytest
from aiokafka.abc import AbstractTokenProvider
from pydantic import ValidationError

from streamflow import ConfigError, Settings
from streamflow.connectors import ConnectorContext, KafkaSecurity, kafka_client_options
from streamflow.transports.kafka import KafkaClient

PASSWORD = "pw-planted-7Hq2"
KEY_PASSWORD = "kp-planted-9Zx4"


class Tokens(AbstractTokenProvider):  # type: ignore[misc]
    """An OAUTHBEARER token provider, named in settings as ``tests.test_kafka_security:Tokens``."""

    async def token(self) -> str:
        return "a.b.c"


NOT_A_PROVIDER = object()


def _openssl(*args: str | Path, cwd: Path) -> None:
    subprocess.run(["openssl", *map(str, args)], cwd=cwd, check=True, capture_output=True,
                   timeout=30)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A CA and a client certificate it signed, whose key is encrypted with KEY_PASSWORD."""
    d = tmp_path_factory.mktemp("pki")
    ec = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1")
    _openssl("req", "-x509", *ec, "-nodes", "-keyout", "ca.key", "-out", "ca.pem", "-days", "1",
             "-subj", "/CN=streamflow-test-ca", cwd=d)
    _openssl("req", *ec, "-keyout", "client.key", "-passout", f"pass:{KEY_PASSWORD}",
             "-out", "client.csr", "-subj", "/CN=client", cwd=d)
    _openssl("x509", "-req", "-in", "client.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
             "-CAcreateserial", "-out", "client.pem", "-days", "1", cwd=d)
    return d


def scram(protocol: str = "SASL_PLAINTEXT", mechanism: str = "SCRAM-SHA-512",
          **more: Any) -> KafkaSecurity:
    return KafkaSecurity(security_protocol=protocol, sasl_mechanism=mechanism,
                         sasl_username="alice", sasl_password=PASSWORD, **more)


def test_plaintext_by_default() -> None:
    assert kafka_client_options("h:9092") == {"bootstrap_servers": "h:9092",
                                              "security_protocol": "PLAINTEXT"}
    assert KafkaClient("h:9092").producer_config()["security_protocol"] == "PLAINTEXT"


def test_tls_with_a_ca_and_mutual_tls_with_an_encrypted_key(pki: Path) -> None:
    one_way = KafkaSecurity(security_protocol="SSL", ssl_cafile=pki / "ca.pem")
    opts = one_way.client_options("h:9093")
    ctx = opts["ssl_context"]
    assert isinstance(ctx, ssl.SSLContext) and opts["security_protocol"] == "SSL"
    assert ctx.check_hostname and ctx.verify_mode == ssl.CERT_REQUIRED
    assert any(c["subject"] == ((("commonName", "streamflow-test-ca"),),)
               for c in ctx.get_ca_certs())
    assert "sasl_mechanism" not in opts

    mutual = KafkaSecurity(security_protocol="SSL", ssl_cafile=pki / "ca.pem",
                           ssl_certfile=pki / "client.pem", ssl_keyfile=pki / "client.key",
                           ssl_key_password=KEY_PASSWORD, ssl_check_hostname=False)
    ctx = mutual.client_options("h:9093")["ssl_context"]
    assert not ctx.check_hostname and ctx.verify_mode == ssl.CERT_REQUIRED

    wrong = mutual.model_copy(update={"ssl_key_password": None})
    with pytest.raises(ConfigError, match=r"ssl_certfile .*client\.pem.*ssl_key_password"):
        wrong.client_options("h:9093")


def test_system_cas_when_no_ca_file_is_named() -> None:
    ctx = KafkaSecurity(security_protocol="SSL").client_options("h:9093")["ssl_context"]
    assert ctx.check_hostname and ctx.verify_mode == ssl.CERT_REQUIRED


@pytest.mark.parametrize("protocol", ["SASL_PLAINTEXT", "SASL_SSL"])
@pytest.mark.parametrize("mechanism", ["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"])
def test_sasl_with_a_password(protocol: str, mechanism: str, pki: Path) -> None:
    tls = {"ssl_cafile": pki / "ca.pem"} if protocol == "SASL_SSL" else {}
    opts = scram(protocol, mechanism, **tls).client_options("h:9094")
    assert (opts["security_protocol"], opts["sasl_mechanism"]) == (protocol, mechanism)
    assert (opts["sasl_plain_username"], opts["sasl_plain_password"]) == ("alice", PASSWORD)
    assert ("ssl_context" in opts) == (protocol == "SASL_SSL")
    assert PASSWORD not in repr(opts) and PASSWORD not in str(opts)


@pytest.mark.parametrize("protocol", ["SASL_PLAINTEXT", "SASL_SSL"])
def test_oauthbearer_loads_its_token_provider_lazily(protocol: str) -> None:
    sec = KafkaSecurity(security_protocol=protocol, sasl_mechanism="OAUTHBEARER",
                        sasl_oauth_token_provider="tests.test_kafka_security:Tokens")
    opts = sec.client_options("h:9094")
    assert isinstance(opts["sasl_oauth_token_provider"], Tokens)
    assert "sasl_plain_password" not in opts


@pytest.mark.parametrize(("provider", "error"), [
    ("tests.test_kafka_security:NOT_A_PROVIDER", "not an aiokafka.abc.AbstractTokenProvider"),
    ("tests.test_kafka_security:Missing", "cannot import it"),
    ("no_such_module_xyz:Tokens", "cannot import it"),
])
def test_a_wrong_token_provider_is_named(provider: str, error: str) -> None:
    sec = KafkaSecurity(security_protocol="SASL_SSL", sasl_mechanism="OAUTHBEARER",
                        sasl_oauth_token_provider=provider)
    with pytest.raises(ConfigError, match=f"sasl_oauth_token_provider '{provider}'.*{error}"):
        sec.client_options("h:9094")


@pytest.mark.parametrize(("given", "error"), [
    ({"security_protocol": "SASL_SSL"}, "SASL_SSL needs sasl_mechanism"),
    ({"security_protocol": "SASL_PLAINTEXT", "sasl_mechanism": "SCRAM-SHA-256",
      "sasl_username": "alice"}, "SCRAM-SHA-256 needs sasl_username and sasl_password"),
    ({"security_protocol": "SASL_SSL", "sasl_mechanism": "OAUTHBEARER"},
     "OAUTHBEARER needs sasl_oauth_token_provider"),
    ({"sasl_mechanism": "PLAIN", "sasl_username": "a", "sasl_password": PASSWORD},
     "security_protocol is PLAINTEXT: use SASL_SSL"),
    ({"security_protocol": "SASL_PLAINTEXT", "sasl_mechanism": "PLAIN", "sasl_username": "a",
      "sasl_password": PASSWORD, "ssl_cafile": "/etc/hosts"},
     "ssl_cafile given but security_protocol is SASL_PLAINTEXT"),
    ({"security_protocol": "SSL", "ssl_cafile": "/nonexistent/ca.pem"},
     "ssl_cafile: no such file: /nonexistent/ca.pem"),
    ({"security_protocol": "SSL", "ssl_keyfile": "/etc/hosts"},
     "ssl_keyfile and ssl_key_password need ssl_certfile"),
    ({"security_protocol": "SASL_SSL", "sasl_mechanism": "GSSAPI"}, "sasl_mechanism"),
    ({"security_protocol": "TLS"}, "security_protocol"),
    ({"security_protocol": "SASL_SSL", "sasl_mechanism": "OAUTHBEARER",
      "sasl_oauth_token_provider": "just_a_module"}, "sasl_oauth_token_provider"),
    ({"sasl_passwrd": PASSWORD}, "sasl_passwrd"),
])
def test_combinations_that_cannot_work_are_refused(given: dict[str, Any], error: str) -> None:
    with pytest.raises(ValidationError, match=error) as e:
        KafkaSecurity.model_validate(given)
    assert PASSWORD not in str(e.value)


def test_a_ca_file_that_is_not_pem_names_the_setting(tmp_path: Path) -> None:
    bad = tmp_path / "ca.pem"
    bad.write_text("not a certificate\n")
    with pytest.raises(ConfigError, match=f"ssl_cafile {bad}: not a readable PEM"):
        KafkaSecurity(security_protocol="SSL", ssl_cafile=bad).client_options("h:9093")


def test_secrets_come_from_files_in_the_environment_and_the_config_file(
    tmp_path: Path, pki: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "pw").write_text(PASSWORD + "\n")  # as `echo` or a mounted secret leaves it
    (tmp_path / "kp").write_text(KEY_PASSWORD)
    config = tmp_path / "streamflow.toml"
    config.write_text(
        '[streamflow]\nkafka_security_protocol = "SASL_SSL"\n'
        'kafka_sasl_mechanism = "SCRAM-SHA-256"\nkafka_sasl_username = "alice"\n'
        f'kafka_sasl_password = "from-the-file"\nkafka_ssl_cafile = "{pki / "ca.pem"}"\n'
        f'kafka_ssl_certfile = "{pki / "client.pem"}"\n'
        f'kafka_ssl_keyfile = "{pki / "client.key"}"\n'
        f'kafka_ssl_key_password_file = "{tmp_path / "kp"}"\n')
    monkeypatch.setenv("STREAMFLOW_CONFIG", str(config))
    s = Settings.load()
    assert s.kafka_security.sasl_password is not None
    assert s.kafka_security.sasl_password.get_secret_value() == "from-the-file"
    assert s.kafka_security.ssl_key_password is not None
    assert s.kafka_security.ssl_key_password.get_secret_value() == KEY_PASSWORD
    assert s.kafka_security.client_options("h:9094")["ssl_context"].check_hostname

    monkeypatch.setenv("STREAMFLOW_KAFKA_SASL_PASSWORD_FILE", str(tmp_path / "pw"))
    s = Settings.load()  # the environment's file replaces the config file's password
    assert s.kafka_security.sasl_password is not None
    assert s.kafka_security.sasl_password.get_secret_value() == PASSWORD
    monkeypatch.setenv("STREAMFLOW_KAFKA_SASL_PASSWORD", PASSWORD)
    with pytest.raises(ConfigError, match="sasl_password and sasl_password_file are both set"):
        Settings.load()
    monkeypatch.delenv("STREAMFLOW_KAFKA_SASL_PASSWORD")
    monkeypatch.setenv("STREAMFLOW_KAFKA_SASL_PASSWORD_FILE", str(tmp_path / "absent"))
    with pytest.raises(ConfigError, match=f"sasl_password_file: cannot read {tmp_path}/absent"):
        Settings.load()


def test_flat_settings_fill_the_kafka_security() -> None:
    s = Settings(kafka_bootstrap="h:9094", kafka_security_protocol="SASL_PLAINTEXT",
                 kafka_sasl_mechanism="PLAIN", kafka_sasl_username="alice",
                 kafka_sasl_password=PASSWORD)  # type: ignore[call-arg]
    assert s.kafka_security == scram(mechanism="PLAIN")
    with pytest.raises(ValidationError, match="kafka_security"):
        Settings(kafka_security_protocol="SASL_SSL")  # type: ignore[call-arg]


def test_connectors_get_the_workers_options_for_its_cluster_only() -> None:
    ctx = ConnectorContext("k", "a", "/tmp", kafka_bootstrap="b1:9094,b2:9094",
                           kafka_security=scram())
    own = ctx.kafka_client_options("b2:9094")
    assert own["sasl_plain_password"] == PASSWORD and own["bootstrap_servers"] == "b2:9094"
    assert ctx.kafka_client_options("elsewhere:9092")["security_protocol"] == "PLAINTEXT"
    theirs = scram("SASL_PLAINTEXT", "PLAIN")
    assert ctx.kafka_client_options("b1:9094", theirs)["sasl_mechanism"] == "PLAIN"
    assert ConnectorContext("k", "a", "/tmp").kafka_client_options("b1:9094") == {
        "bootstrap_servers": "b1:9094", "security_protocol": "PLAINTEXT"}


ROOT = Path(__file__).resolve().parent.parent
CLIENTS = {"AIOKafkaProducer", "AIOKafkaConsumer", "AIOKafkaAdminClient"}


def test_every_kafka_client_is_built_from_the_one_builder() -> None:
    """A client made with its own ``bootstrap_servers`` would skip TLS and SASL: each one in
    the product, the connectors and the benchmarks takes ``**`` options from the builder."""
    sources = [*(ROOT / "streamflow").rglob("*.py"), *(ROOT / "bench").rglob("*.py"),
               *ROOT.glob("connectors/*/streamflow_connector_*/**/*.py")]
    made = 0
    for path in sources:
        where = path.relative_to(ROOT)
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.keyword) and node.arg == "bootstrap_servers":
                assert where == Path("streamflow/connectors/_kafka.py"), \
                    f"{where}:{node.lineno}: bootstrap_servers outside the builder"
            if not isinstance(node, ast.Call):
                continue
            name = getattr(node.func, "id", None) or getattr(node.func, "attr", None)
            if name in CLIENTS:
                made += 1
                assert any(k.arg is None for k in node.keywords), \
                    f"{where}:{node.lineno}: {name} without **options from the builder"
    assert made >= 20, f"only {made} client constructions found: is the walk right?"
