"""The `services` API and CLI wiring against the real local services (no mocks)."""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import psutil
import pytest

from streamflow import devservices as services
from streamflow.cli._services import add_cli
from streamflow.devservices import ServiceStatus
from streamflow.errors import ServiceError


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="streamflow")
    sub = parser.add_subparsers(dest="command", required=True)
    add_cli(sub)
    return parser


def test_constants_are_loopback() -> None:
    assert services.KAFKA_VERSION == "4.1.2"
    assert services.KAFKA_BOOTSTRAP == "127.0.0.1:9092"
    assert services.JAEGER_QUERY_URL == "http://127.0.0.1:16686"
    assert services.OTLP_HTTP_ENDPOINT == "http://127.0.0.1:4318"
    assert services.POSTGRES_DSN == "postgresql://streamflow:streamflow@127.0.0.1:5432/streamflow"


def test_status_starts_nothing_and_has_shape() -> None:
    before = {p.pid for p in psutil.process_iter()}
    result = services.status()
    assert list(result) == ["kafka", "postgres", "jaeger"]
    for name, st in result.items():
        assert isinstance(st, ServiceStatus)
        assert st.name == name
        assert st.ports
    started = {p.pid for p in psutil.process_iter()} - before
    assert not any(
        "kafka.Kafka" in " ".join(psutil.Process(pid).cmdline())
        for pid in started
        if psutil.pid_exists(pid)
    )


@pytest.mark.kafka
def test_up_is_idempotent_and_reuses_running_broker() -> None:
    first = services.up(["kafka"])["kafka"]
    assert first.running and first.pid is not None
    t0 = time.monotonic()
    second = services.up(["kafka"])["kafka"]
    assert time.monotonic() - t0 < 5, "second up must reuse, not restart"
    assert second.pid == first.pid
    assert services.status(["kafka"])["kafka"].running


def test_unknown_service_is_an_error() -> None:
    with pytest.raises(ServiceError, match="unknown service"):
        services.status(["zookeeper"])


@pytest.mark.kafka
def test_cli_json_shape(capsys: pytest.CaptureFixture[str]) -> None:
    services.up(["kafka"])
    args = _parser().parse_args(["services", "up", "--json", "kafka"])
    assert args.func(args) == 0
    out = json.loads(capsys.readouterr().out)
    assert list(out) == ["kafka"]
    kafka = out["kafka"]
    assert kafka["running"] is True
    assert isinstance(kafka["pid"], int)
    assert kafka["ports"] == [9092, 9093, 9194, 9195, 9196]
    assert kafka["bootstrap"] == services.KAFKA_BOOTSTRAP
    assert kafka["version"] == services.KAFKA_VERSION
    assert kafka["log"].endswith("kafka.log")

    args = _parser().parse_args(["services", "status", "--json"])
    rc = args.func(args)
    out = json.loads(capsys.readouterr().out)
    assert set(out) == {"kafka", "postgres", "jaeger"}
    assert rc == (0 if all(v["running"] for v in out.values()) else 1)
    for value in out.values():
        assert {"running", "pid", "ports", "version", "log"} <= set(value)
        assert "url" in value or "bootstrap" in value
    assert out["jaeger"]["url"] == services.JAEGER_QUERY_URL
    assert out["postgres"]["url"] == services.POSTGRES_DSN


def test_cli_every_subcommand_has_help(capsys: pytest.CaptureFixture[str]) -> None:
    for cmd in ("up", "status", "down", "reset"):
        with pytest.raises(SystemExit) as exc:
            _parser().parse_args(["services", cmd, "--help"])
        assert exc.value.code == 0
        assert "--json" in capsys.readouterr().out


def test_reset_refuses_services_without_data(capsys: pytest.CaptureFixture[str]) -> None:
    before = services.status(["jaeger"])["jaeger"]
    with pytest.raises(ServiceError, match="cannot reset jaeger: only kafka"):
        services.reset(["jaeger"])
    args = _parser().parse_args(["services", "reset", "postgres"])
    assert args.func(args) == 1
    assert "cannot reset postgres" in capsys.readouterr().err
    after = services.status(["jaeger"])["jaeger"]
    assert (after.running, after.pid) == (before.running, before.pid)  # the refusal stops nothing


def test_cli_unknown_name_exits_nonzero(capsys: pytest.CaptureFixture[str]) -> None:
    args = _parser().parse_args(["services", "status", "nope"])
    assert args.func(args) != 0
    assert "unknown service" in capsys.readouterr().err


def test_taken_port_names_port_and_holder() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        with pytest.raises(ServiceError) as exc:
            services.check_port_free(port, "kafka")
    message = str(exc.value)
    assert str(port) in message
    assert f"pid {os.getpid()}" in message
    assert psutil.Process().name() in message
    services.check_port_free(port, "kafka")  # released again: no error


def test_postgres_dsn_logs_in() -> None:
    st = services.up(["postgres"])["postgres"]
    assert st.running and st.pid is not None
    out = subprocess.run(
        ["psql", services.POSTGRES_DSN, "-X", "-tAc", "select current_user, current_database()"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    assert out == "streamflow|streamflow"


@pytest.mark.jaeger
@pytest.mark.timeout(1800)  # the first `up` on a fresh machine compiles Jaeger
def test_jaeger_trace_round_trip() -> None:
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor

    assert services.up(["jaeger"])["jaeger"].running
    provider = TracerProvider(resource=Resource.create({"service.name": "test-services"}))
    exporter = OTLPSpanExporter(endpoint=f"{services.OTLP_HTTP_ENDPOINT}/v1/traces")
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    with provider.get_tracer(__name__).start_as_current_span("round-trip") as span:
        trace_id = format(span.get_span_context().trace_id, "032x")
    provider.shutdown()

    url = f"{services.JAEGER_QUERY_URL}/api/v3/traces/{trace_id}"
    deadline = time.monotonic() + 30
    body: dict[str, Any] = {}
    while time.monotonic() < deadline:  # ingestion is asynchronous (batch processor)
        try:
            with urllib.request.urlopen(url, timeout=5) as resp:
                body = json.load(resp)
            break
        except urllib.error.HTTPError as exc:
            if exc.code != 404:
                raise
            time.sleep(0.3)
    spans = [
        s for rs in body["result"]["resourceSpans"] for ss in rs["scopeSpans"] for s in ss["spans"]
    ]
    assert [s["name"] for s in spans] == ["round-trip"]


def test_a_slow_service_that_keeps_logging_is_waited_for(tmp_path: Path) -> None:
    """Kafka with thousands of partitions logs steadily for a minute: not a hang."""
    from streamflow.devservices._base import alive, await_ready, spawn_detached

    log = tmp_path / "svc.log"
    chatty = ("import time\nfor i in range(12):\n    print('loading', i, flush=True)\n"
              "    time.sleep(0.25)\nprint('started', flush=True)\ntime.sleep(30)\n")
    pid = spawn_detached([sys.executable, "-c", chatty], log=log, cwd=tmp_path)
    try:
        started = time.monotonic()
        await_ready("chatty", pid, lambda: "started" in log.read_text(), log, timeout=1.0)
        assert time.monotonic() - started > 2.5  # longer than the quiet timeout
    finally:
        os.kill(pid, signal.SIGKILL)

    silent = spawn_detached([sys.executable, "-c", "import time; time.sleep(30)"],
                            log=tmp_path / "silent.log", cwd=tmp_path)
    with pytest.raises(ServiceError, match=r"silent: not ready after \d+s \(gives up after 1s "
                                           r"without a new log line\)"):
        await_ready("silent", silent, lambda: False, tmp_path / "silent.log", timeout=1.0)
    assert not alive(silent)  # stopped, not left behind


def test_cli_brokers_3_names_the_cluster_in_kafkas_place(
        capsys: pytest.CaptureFixture[str]) -> None:
    """Status only: the cluster itself is started by tests/cluster (the CI's cluster phase)."""
    args = _parser().parse_args(["services", "status", "--json", "--brokers", "3", "kafka"])
    args.func(args)
    out = json.loads(capsys.readouterr().out)
    assert list(out) == [services.KAFKA_CLUSTER]
    assert out[services.KAFKA_CLUSTER]["ports"] == [19092, 19093, 19094, 19192, 19193, 19194]
    assert out[services.KAFKA_CLUSTER]["bootstrap"] == services.KAFKA_CLUSTER_BOOTSTRAP
    with pytest.raises(SystemExit):
        _parser().parse_args(["services", "up", "--help"])
    assert "--brokers" in capsys.readouterr().out


def test_a_failed_setup_command_shows_no_argument(tmp_path: Path) -> None:
    """Arguments may hold a secret (a password in SQL, a keystore's): the error and the log
    name the program and what it was for, and keep its output."""
    from streamflow.devservices._base import run

    log = tmp_path / "setup.log"
    with pytest.raises(ServiceError) as exc:
        run([sys.executable, "-c", "import sys; print('it broke'); sys.exit(3)",
             "hunter2-secret"], "demo: a step", log=log)
    message = str(exc.value)
    assert message.startswith("demo: a step failed (") and "exit 3" in message
    assert "it broke" in message
    assert "hunter2" not in message and "hunter2" not in log.read_text()
    assert run([sys.executable, "-c", "print(input())"], "demo: stdin",
               stdin="hunter2-secret\n") == "hunter2-secret\n"


def test_a_secret_file_is_never_readable_by_others(tmp_path: Path) -> None:
    from streamflow.devservices._base import write_private

    fresh, older = tmp_path / "fresh.properties", tmp_path / "older.properties"
    older.write_text("old")
    older.chmod(0o644)
    old_umask = os.umask(0)  # the most permissive umask: the mode must not come from it
    try:
        write_private(fresh, "password=x\n")
        write_private(older, "password=y\n")
    finally:
        os.umask(old_umask)
    assert (fresh.stat().st_mode & 0o777, older.stat().st_mode & 0o777) == (0o600, 0o600)
    assert older.read_text() == "password=y\n"


def test_the_dev_pki_folder_is_private_on_every_use() -> None:
    pki = services.dev_pki()
    pki.root.chmod(0o755)  # made earlier, by an older version or another umask
    assert services.dev_pki().root.stat().st_mode & 0o777 == 0o700


def test_a_failed_psql_statement_does_not_show_the_tls_roles_password() -> None:
    """psql quotes the line of a statement that failed: the password in it is masked."""
    from streamflow.devservices._postgres import _psql_admin

    services.up(["postgres"])
    with pytest.raises(ServiceError) as exc:
        _psql_admin(f"ALTER ROL nobody PASSWORD '{services.POSTGRES_TLS_PASSWORD}'")
    assert "syntax error" in str(exc.value)
    assert services.POSTGRES_TLS_PASSWORD not in str(exc.value)
