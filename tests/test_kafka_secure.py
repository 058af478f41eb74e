"""The dev broker's secured listeners, end to end: a pipeline with exactly-once (transactions)
over SASL_SSL/SCRAM-SHA-512, mutual TLS and OAUTHBEARER; and each way a connection is refused
ends within 15 s in one error naming the listener, the mechanism and what to check."""

from __future__ import annotations

import asyncio
import base64
import logging
import time
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiokafka.abc import AbstractTokenProvider
from pydantic import BaseModel

from streamflow import Asset, Pipeline, Settings, Worker
from streamflow import devservices as dev
from streamflow.cli import main
from streamflow.connectors import KafkaSecurity
from streamflow.connectors.testing import MemorySink
from streamflow.devservices import DevPki, dev_pki
from streamflow.errors import TransportError
from streamflow.transports.kafka import KafkaTransport

from .helpers import memory_source, read_topic

pytestmark = pytest.mark.timeout(120)


class UnsecuredJwt(AbstractTokenProvider):  # type: ignore[misc]
    """An unsigned token (``alg: none``), which only Kafka's unsecured validator accepts."""

    lifetime_s = 600

    async def token(self) -> str:
        def part(d: dict[str, Any]) -> str:
            return base64.urlsafe_b64encode(orjson.dumps(d)).rstrip(b"=").decode()

        now = int(time.time())
        claims = {"sub": "streamflow", "iat": now - 3600, "exp": now + self.lifetime_s}
        return f"{part({'alg': 'none'})}.{part(claims)}."


@pytest.fixture(scope="module")
def pki(kafka_bootstrap: str) -> DevPki:
    return dev_pki()  # made by `services up kafka` (the kafka_bootstrap fixture)


def scram(pki: DevPki, password: str = dev.KAFKA_SCRAM_PASSWORD, **more: Any) -> KafkaSecurity:
    return KafkaSecurity(security_protocol="SASL_SSL", sasl_mechanism="SCRAM-SHA-512",
                         sasl_username=dev.KAFKA_SCRAM_USER, sasl_password=password,
                         **{"ssl_cafile": pki.ca, **more})


def mtls(pki: DevPki, cert: Path | None = None, key: Path | None = None) -> KafkaSecurity:
    return KafkaSecurity(security_protocol="SSL", ssl_cafile=pki.ca,
                         ssl_certfile=cert or pki.client_cert, ssl_keyfile=key or pki.client_key)


class ExpiredJwt(UnsecuredJwt):
    """A token that expired an hour ago: the validator refuses it."""

    lifetime_s = -3600


def oauth(provider: str = "UnsecuredJwt") -> KafkaSecurity:
    return KafkaSecurity(security_protocol="SASL_PLAINTEXT", sasl_mechanism="OAUTHBEARER",
                         sasl_oauth_token_provider=f"tests.test_kafka_secure:{provider}")


class Doc(BaseModel):
    id: int
    body: str


@pytest.mark.parametrize("listener", ["scram", "mtls", "oauth"])
async def test_a_pipeline_runs_exactly_once_over_each_secured_listener(
        listener: str, pki: DevPki, tmp_path: Path, namespace: str) -> None:
    bootstrap, security = {
        "scram": (dev.KAFKA_SCRAM_BOOTSTRAP, scram(pki)),
        "mtls": (dev.KAFKA_MTLS_BOOTSTRAP, mtls(pki)),
        "oauth": (dev.KAFKA_OAUTH_BOOTSTRAP, oauth()),
    }[listener]
    settings = Settings(kafka_bootstrap=bootstrap, kafka_security=security,
                        state_dir=tmp_path / "state", namespace=namespace, partitions=2,
                        drain_timeout_s=60, http_port=0, exactly_once=True)
    docs, upper = Asset("docs", Doc, key="id"), Asset("upper", Doc, key="id")
    p = Pipeline(f"secure-{listener}")
    p.source(memory_source([[{"id": i, "body": f"d{i}"} for i in range(10)],
                            [{"id": i, "body": f"d{i}"} for i in range(10, 20)]]),
             asset=docs, name="docs")

    @p.stage(inputs=[docs], output=upper)
    def shout(d: Doc) -> Doc:
        return Doc(id=d.id, body=d.body.upper())

    sink = MemorySink()
    p.sink(sink, asset=upper)
    summary = await Worker(p, settings).run()
    assert summary.dead_lettered == 0
    assert sorted(r.value["id"] for r in sink.written) == list(range(20))
    # Read back through the same listener, read_committed: the transactions committed.
    out = [orjson.loads(m.value) for m in await read_topic(settings, f"{namespace}.upper")]
    assert sorted(o["id"] for o in out) == list(range(20))
    assert {o["body"] for o in out} == {f"D{i}" for i in range(20)}


WRONG = "wrong-pw-planted-Qz7"


@pytest.mark.parametrize("case", ["wrong password", "untrusted CA", "expired certificate",
                                  "plaintext to TLS", "expired token",
                                  "certificate of another CA"])
async def test_a_refused_connection_ends_in_one_clear_error_within_15s(
        case: str, pki: DevPki, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    bootstrap, security, says = {
        "wrong password": (dev.KAFKA_SCRAM_BOOTSTRAP, scram(pki, WRONG),
                           "refused the credentials: check sasl_username and sasl_password"),
        "untrusted CA": (dev.KAFKA_SCRAM_BOOTSTRAP, scram(pki, ssl_cafile=pki.untrusted_ca),
                         "certificate is not trusted (unable to get local issuer certificate)"
                         ": check that ssl_cafile"),
        "expired certificate": (dev.KAFKA_MTLS_BOOTSTRAP,
                                mtls(pki, pki.expired_cert, pki.expired_key),
                                f"ssl_certfile {pki.expired_cert} expired on Jan  2 00:00:00 "
                                "2020 GMT"),
        "plaintext to TLS": (dev.KAFKA_MTLS_BOOTSTRAP, KafkaSecurity(),
                             "likely expects TLS or SASL. Check security_protocol"),
        "expired token": (dev.KAFKA_OAUTH_BOOTSTRAP, oauth("ExpiredJwt"),
                          "the broker refused the token (its metadata names no broker after "
                          "the OAUTHBEARER exchange): check the token provider's token"),
        "certificate of another CA": (dev.KAFKA_MTLS_BOOTSTRAP,
                                      mtls(pki, pki.untrusted_cert, pki.untrusted_key),
                                      "it rejected the client certificate, or the listener "
                                      "expects another protocol. Check ssl_certfile"),
    }[case]
    what = security.security_protocol + (
        f"/{security.sasl_mechanism}" if security.sasl_mechanism else "")
    t = KafkaTransport(bootstrap, security=security)
    started = time.monotonic()
    try:
        with pytest.raises(TransportError) as e:
            await t.start()
    finally:
        await t.close()
    took = time.monotonic() - started
    assert took < 15, f"{case}: {took:.1f}s"
    message = str(e.value)
    assert message.startswith(f"cannot connect to Kafka listener {bootstrap} with {what}: ")
    assert says in message
    assert WRONG not in message and dev.KAFKA_SCRAM_PASSWORD not in message
    assert "streamflow-dev-store" not in message
    said = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert not said, f"one error, not also these log lines: {said}"


async def test_nothing_listening_is_said_plainly_and_at_once() -> None:
    t = KafkaTransport("127.0.0.1:1", security=KafkaSecurity())
    started = time.monotonic()
    with pytest.raises(TransportError, match=r"127\.0\.0\.1:1 with PLAINTEXT: nothing accepts "
                                             r"connections there.*services up kafka"):
        await asyncio.wait_for(t.start(), 30)
    await t.close()
    assert time.monotonic() - started < 5


def test_the_cli_says_the_same_through_the_settings(
        pki: DevPki, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """``dlq list`` (as every CLI that reads Kafka) connects through the transport's start."""
    (tmp_path / "pw").write_text(WRONG)
    for name, value in {"SECURITY_PROTOCOL": "SASL_SSL", "SASL_MECHANISM": "SCRAM-SHA-512",
                        "SASL_USERNAME": dev.KAFKA_SCRAM_USER, "SSL_CAFILE": str(pki.ca),
                        "SASL_PASSWORD_FILE": str(tmp_path / "pw")}.items():
        monkeypatch.setenv(f"STREAMFLOW_KAFKA_{name}", value)
    started = time.monotonic()
    assert main(["dlq", "list", "--kafka", dev.KAFKA_SCRAM_BOOTSTRAP,
                 "--state-dir", str(tmp_path / "state")]) == 2
    assert time.monotonic() - started < 15
    err = capsys.readouterr().err
    assert err.startswith(f"streamflow: error: cannot connect to Kafka listener "
                          f"{dev.KAFKA_SCRAM_BOOTSTRAP} with SASL_SSL/SCRAM-SHA-512: the broker "
                          "refused the credentials"), err
    assert WRONG not in err


def test_up_again_keeps_the_broker_and_its_scram_user(
        pki: DevPki, capfd: pytest.CaptureFixture[str]) -> None:
    """A warm machine: the broker already runs these settings and has the user, so `up`
    neither restarts it nor starts a JVM to add the user again."""
    before = dev.status(["kafka"])["kafka"].pid
    dev.up(["kafka"])
    err = capfd.readouterr().err
    assert "restarting" not in err and "adding SCRAM user" not in err, err
    assert dev.status(["kafka"])["kafka"].pid == before


async def test_a_listener_that_never_answers_ends_within_15s_not_40() -> None:
    """A port that accepts and stays silent (a TLS listener dialled with the wrong protocol may
    behave so): aiokafka would wait for its request timeout; the start gives up in time."""
    accepted: list[asyncio.StreamWriter] = []

    async def silent(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.append(writer)

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    t = KafkaTransport(f"127.0.0.1:{port}", security=KafkaSecurity())
    started = time.monotonic()
    try:
        with pytest.raises(TransportError, match=rf"listener 127\.0\.0\.1:{port} with PLAINTEXT: "
                                                 r"no answer within 3s: check that this port "
                                                 r"is a Kafka listener expecting PLAINTEXT"):
            await t.start()
    finally:
        await t.close()
        for w in accepted:
            w.close()
        server.close()
    assert accepted and time.monotonic() - started < 14.5


def test_bootstrap_hosts_are_read_as_aiokafka_reads_them() -> None:
    from streamflow.transports.kafka._diagnose import bootstrap_hosts

    assert bootstrap_hosts("broker1, broker2:9093,[::1]:9094,[fe80::1]") == [
        ("broker1", 9092), ("broker2", 9093), ("::1", 9094), ("fe80::1", 9092)]
    with pytest.raises(TransportError, match=r"Kafka bootstrap 'broker1:ninety': a host's "
                                             r"port is not a number"):
        bootstrap_hosts("broker1:ninety")


async def _silent_server() -> tuple[asyncio.Server, list[asyncio.StreamWriter]]:
    accepted: list[asyncio.StreamWriter] = []

    async def silent(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.append(writer)

    return await asyncio.start_server(silent, "127.0.0.1", 0), accepted


async def test_a_host_without_port_or_every_host_refusing_is_said_plainly() -> None:
    """No ValueError from the missing port (9092, as aiokafka), and every host is dialled."""
    for bootstrap in ("127.0.0.2", "127.0.0.1:1,127.0.0.1:2"):
        t = KafkaTransport(bootstrap, security=KafkaSecurity())
        started = time.monotonic()
        with pytest.raises(TransportError, match=rf"listener {bootstrap} with PLAINTEXT: "
                                                 r"nothing accepts connections there"):
            await t.start()
        await t.close()
        assert time.monotonic() - started < 5


@pytest.mark.timeout(90)
async def test_a_dead_first_host_does_not_fail_a_start_the_others_serve(
        kafka_bootstrap: str) -> None:
    """aiokafka tries hosts in (random) turn and waits its request timeout (30 s) on a silent
    one: the start goes on while another host answers, and a refused first host is no reason
    to give up either."""
    import random

    server, accepted = await _silent_server()
    silent = f"127.0.0.1:{server.sockets[0].getsockname()[1]}"
    def order(seed: int) -> list[int]:
        random.seed(seed)
        hosts = [0, 1]
        random.shuffle(hosts)
        return hosts

    seed = next(k for k in range(100) if order(k) == [0, 1])
    try:
        for bootstrap in (f"127.0.0.1:1,{kafka_bootstrap}", f"{silent},{kafka_bootstrap}"):
            t = KafkaTransport(bootstrap, security=KafkaSecurity())
            random.seed(seed)  # aiokafka shuffles the hosts: the silent one first
            started = time.monotonic()
            try:
                await t.start()
                assert await t.partition_count("__consumer_offsets") > 0
            finally:
                await t.close()
        assert accepted and time.monotonic() - started > 20  # it did wait on the silent one
    finally:
        for w in accepted:
            w.close()
        server.close()


async def test_a_cancelled_start_leaves_no_client_open() -> None:
    server, accepted = await _silent_server()
    t = KafkaTransport(f"127.0.0.1:{server.sockets[0].getsockname()[1]}",
                       security=KafkaSecurity())
    try:
        task = asyncio.ensure_future(t.start())
        await asyncio.sleep(0.5)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert t._producer is None
    finally:
        for w in accepted:
            w.close()
        server.close()
