"""The postgres connectors over TLS (``sslmode=verify-full`` with the dev CA) as a role that may
log in only over TLS with scram-sha-256, its password from a file or the environment; a wrong
CA or password ends in one clear error, never showing the password."""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from streamflow import devservices as dev
from streamflow.connectors import (
    ConnectorContext,
    ConnectorError,
    SinkRecord,
    build_sink,
    build_source,
)
from streamflow.devservices import DevPki, dev_pki

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(scope="module")
def pki(postgres_dsn: str) -> DevPki:
    return dev_pki()  # `services up postgres` (the postgres_dsn fixture) installed its TLS


@pytest.fixture
def secret_file(tmp_path: Path) -> Path:
    path = tmp_path / "pg-password"
    path.write_text(dev.POSTGRES_TLS_PASSWORD + "\n")
    return path


@pytest.fixture
async def table(postgres_dsn: str) -> AsyncIterator[str]:
    import asyncpg  # type: ignore[import-untyped]

    name = "tls_" + uuid.uuid4().hex[:12]
    yield name
    conn = await asyncpg.connect(postgres_dsn)
    await conn.execute(f"DROP TABLE IF EXISTS {name}")
    await conn.close()


def _ctx(tmp_path: Path) -> ConnectorContext:
    return ConnectorContext(name="pg", asset="rows", state_dir=str(tmp_path / "state"))


@pytest.mark.parametrize("password_from", ["file", "env"])
async def test_sink_and_source_over_verified_tls_with_scram(
        password_from: str, pki: DevPki, secret_file: Path, table: str, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SF_TEST_PG_PASSWORD", dev.POSTGRES_TLS_PASSWORD)
    cfg: dict[str, Any] = {"dsn": dev.POSTGRES_TLS_DSN, "table": table,
                           "sslmode": "verify-full", "sslrootcert": str(pki.ca),
                           **({"password_file": str(secret_file)} if password_from == "file"
                              else {"password_env": "SF_TEST_PG_PASSWORD"})}
    sink = build_sink("postgres", cfg)
    await sink.setup(_ctx(tmp_path))
    await sink.write([SinkRecord(str(i), f"a{i}", "p", {"id": i}) for i in range(5)])
    await sink.flush()
    # The session the sink used is encrypted and authenticated by scram-sha-256.
    tls = await sink.db.run("check", lambda c: c.fetchrow(  # type: ignore[attr-defined]
        "SELECT s.ssl, s.version, current_user AS who FROM pg_stat_ssl s "
        "WHERE s.pid = pg_backend_pid()"))
    await sink.stop()
    assert tls["ssl"] and tls["version"].startswith("TLSv1.") and tls["who"] == "streamflow_tls"

    src = build_source("postgres", {**cfg, "cursor_column": "id"})
    await src.setup(_ctx(tmp_path))
    batch = await anext(aiter(src.read()))
    await src.stop()
    assert sorted(r.data["id"] for r in batch.records) == list(range(5))


@pytest.mark.parametrize("case", ["untrusted CA", "untrusted CA with require",
                                  "wrong password", "no TLS"])
async def test_a_refused_connection_says_what_to_check(
        case: str, pki: DevPki, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    wrong = "pw-planted-Zr5q"
    cfg: dict[str, Any] = {"dsn": dev.POSTGRES_TLS_DSN, "table": "never_made",
                           "sslmode": "verify-full", "sslrootcert": str(pki.ca),
                           "password": dev.POSTGRES_TLS_PASSWORD, "max_retries": 3}
    says = {
        "untrusted CA": "(sslmode verify-full): the server's certificate is not trusted "
                        "(self-signed certificate in certificate chain): check that "
                        "sslrootcert",
        "untrusted CA with require": "(sslmode require): the server's certificate is not "
                                     "trusted (self-signed certificate in certificate chain)",
        "wrong password": "refused the login (InvalidPasswordError: password authentication "
                          "failed for user \"streamflow_tls\"): check the user in dsn, the "
                          "password",
        "no TLS": "refused the login (InvalidAuthorizationSpecificationError: pg_hba.conf "
                  "rejects connection",
    }[case]
    if case.startswith("untrusted CA"):  # require with a CA checks it, as libpq does
        cfg["sslrootcert"] = str(pki.untrusted_ca)
        cfg["sslmode"] = "require" if case.endswith("require") else "verify-full"
    elif case == "wrong password":
        cfg["password"] = wrong
    else:
        cfg["sslmode"] = "disable"
        del cfg["sslrootcert"]
    sink = build_sink("postgres", cfg)
    await sink.setup(_ctx(tmp_path))
    started = time.monotonic()
    with pytest.raises(ConnectorError) as e:
        await sink.write([SinkRecord("1", "a1", "p", {"id": 1})])
        await sink.flush()
    await sink.stop()
    assert time.monotonic() - started < 5, "refusals are not retried"
    message = str(e.value)
    assert message.startswith("postgres sink (never_made): cannot ")
    assert "PostgreSQL at 127.0.0.1:5432/streamflow" in message and says in message, message
    for text in (message, caplog.text, repr(sink.cfg)):  # type: ignore[attr-defined]
        assert wrong not in text and dev.POSTGRES_TLS_PASSWORD not in text


@pytest.mark.parametrize("ca", [False, True])
async def test_require_presents_the_client_certificate(
        ca: bool, pki: DevPki, table: str, tmp_path: Path) -> None:
    """sslmode require with sslcert/sslkey: the certificate is presented (the server saw its
    subject), not dropped because require checks nothing of the server's."""
    cfg: dict[str, Any] = {"dsn": dev.POSTGRES_TLS_DSN, "table": table, "sslmode": "require",
                           "sslcert": str(pki.client_cert), "sslkey": str(pki.client_key),
                           "password": dev.POSTGRES_TLS_PASSWORD,
                           **({"sslrootcert": str(pki.ca)} if ca else {})}
    sink = build_sink("postgres", cfg)
    await sink.setup(_ctx(tmp_path))
    seen = await sink.db.run("check", lambda c: c.fetchrow(  # type: ignore[attr-defined]
        "SELECT s.ssl, s.client_dn FROM pg_stat_ssl s WHERE s.pid = pg_backend_pid()"))
    await sink.stop()
    assert seen["ssl"] and seen["client_dn"] == "/CN=streamflow-client"


def test_ssl_files_without_a_tls_mode_are_refused(pki: DevPki) -> None:
    """prefer or allow would drop them silently (they may end in plain text)."""
    for mode in ("prefer", "allow"):
        with pytest.raises((ValidationError, ConnectorError),
                           match=f"need sslmode require, verify-ca or verify-full .sslmode "
                                 f"is {mode}: they would be ignored"):
            build_sink("postgres", {"dsn": dev.POSTGRES_TLS_DSN, "table": "t", "sslmode": mode,
                                    "sslcert": str(pki.client_cert),
                                    "sslkey": str(pki.client_key)})


def test_password_settings_are_checked_up_front(tmp_path: Path, secret_file: Path) -> None:
    base = {"dsn": "postgresql://u:inline@h/db", "table": "t"}
    with pytest.raises((ValidationError, ConnectorError),
                       match="password_file and a password in dsn are all set: keep one"):
        build_sink("postgres", {**base, "password_file": str(secret_file)})
    with pytest.raises((ValidationError, ConnectorError), match="sslrootcert/sslcert need "
                                                                "sslmode"):
        build_sink("postgres", {**base, "dsn": "postgresql://u@h/db",
                                "sslrootcert": str(secret_file)})


def test_up_again_changes_nothing(pki: DevPki, capfd: pytest.CaptureFixture[str]) -> None:
    """A warm machine: the TLS settings are in place, so `up` neither rewrites nor reloads."""
    dev.up(["postgres"])
    assert "reloading" not in capfd.readouterr().err
    conf = next(Path("/etc/postgresql").glob("*/streamflow/pg_hba.conf"))
    assert conf.read_text().startswith("# streamflow devservices: TLS-only role (begin)\n"
                                       "hostssl all streamflow_tls 127.0.0.1/32 scram-sha-256\n")


def test_up_again_reads_no_configuration_when_the_tls_login_works(
        pki: DevPki, monkeypatch: pytest.MonkeyPatch) -> None:
    """The cluster's TLS folder is postgres's own (0700): a user other than root must still be
    able to run `up` on a warm machine, so a working TLS login skips the install entirely."""
    from streamflow.devservices import _postgres

    def unreadable(*_: object) -> bool:
        raise PermissionError(13, "Permission denied", "/etc/postgresql/…/tls/server.key")

    monkeypatch.setattr(_postgres, "ensure_tls", unreadable)
    assert dev.up(["postgres"])["postgres"].running


def test_a_failing_tls_login_reinstalls_with_the_password_off_the_command_line(
        pki: DevPki, monkeypatch: pytest.MonkeyPatch) -> None:
    """The role is reset through psql's stdin: no process's arguments show the password."""
    from streamflow.devservices import _base, _postgres

    real_logs_in, real_run = _postgres._logs_in, _base.subprocess.run
    argv: list[list[str]] = []
    failed: list[str] = []

    def first_tls_login_fails(user: str, password: str, params: str = "") -> bool:
        if user == dev.POSTGRES_TLS_USER and not failed:
            failed.append(user)
            return False
        return real_logs_in(user, password, params)

    def recording(cmd: list[str], *args: Any, **kwargs: Any) -> Any:
        argv.append(list(cmd))
        return real_run(cmd, *args, **kwargs)

    monkeypatch.setattr(_postgres, "_logs_in", first_tls_login_fails)
    monkeypatch.setattr(_base.subprocess, "run", recording)
    assert dev.up(["postgres"])["postgres"].running
    monkeypatch.undo()
    assert failed and any("psql" in part for cmd in argv for part in cmd)  # role was reset
    assert not any(dev.POSTGRES_TLS_PASSWORD in part for cmd in argv for part in cmd)
    assert _postgres._logs_in(dev.POSTGRES_TLS_USER, dev.POSTGRES_TLS_PASSWORD,
                              f"sslmode=verify-full sslrootcert={pki.ca}")
