"""A Kafka password planted in the settings never shows: not in logs, reprs, errors, a refused
login, or the worker's /status."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import httpx
import pytest

from streamflow import ConfigError, Settings, Worker
from streamflow.connectors import KafkaSecurity
from streamflow.errors import TransportError
from streamflow.transports.kafka import KafkaTransport

from .test_observability import pipeline, wait_for

PASSWORD = "pw-planted-Kd81x"


def _never_shown(*texts: str) -> None:
    for text in texts:
        assert PASSWORD not in text


async def test_a_refused_sasl_login_shows_no_password(
    kafka_bootstrap: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    security = KafkaSecurity(security_protocol="SASL_PLAINTEXT", sasl_mechanism="SCRAM-SHA-512",
                             sasl_username="alice", sasl_password=PASSWORD)
    t = KafkaTransport(kafka_bootstrap, security=security)  # the broker speaks no SASL
    with pytest.raises(TransportError) as e:
        await asyncio.wait_for(t.start(), 30)
    await t.close()
    assert "SaslHandShake" in caplog.text, "aiokafka tried SCRAM: the settings reached it"
    _never_shown(caplog.text, str(e.value), repr(e.value), repr(t.client),
                 repr(t.client.producer_config()), str(t.client.consumer_config("g")))


async def test_a_planted_password_stays_out_of_logs_status_and_errors(
    tmp_path: Path, namespace: str, caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    caplog.set_level(logging.DEBUG)
    (tmp_path / "pw").write_text(PASSWORD)
    for name, value in {"SECURITY_PROTOCOL": "SASL_SSL", "SASL_MECHANISM": "SCRAM-SHA-256",
                        "SASL_USERNAME": "alice", "SASL_PASSWORD_FILE": str(tmp_path / "pw")
                        }.items():
        monkeypatch.setenv(f"STREAMFLOW_KAFKA_{name}", value)
    # The embedded log: the worker carries the Kafka settings (for its connectors) all the same.
    settings = Settings.load(state_dir=tmp_path / "state", namespace=namespace, http_port=0)
    assert settings.kafka_security.sasl_password is not None
    worker = Worker(pipeline(), settings)
    task = asyncio.create_task(worker.run())
    while worker.http_port is None:
        assert not task.done(), task
        await asyncio.sleep(0.01)
    try:
        async def ready() -> None:
            assert worker.probe.ready()[0]

        await wait_for(ready)
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{worker.http_port}",
                                     timeout=10) as http:
            status = (await http.get("/status")).text
            metrics = (await http.get("/metrics")).text
        assert '"stages"' in status
    finally:
        worker.request_stop()
        await asyncio.wait_for(task, 120)
    monkeypatch.setenv("STREAMFLOW_KAFKA_SASL_MECHANISM", "PLAIN")
    monkeypatch.setenv("STREAMFLOW_KAFKA_SECURITY_PROTOCOL", "SSL")  # SASL settings, no SASL
    with pytest.raises(ConfigError, match="use SASL_SSL") as e:
        Settings.load()
    out = capsys.readouterr()
    _never_shown(status, metrics, caplog.text, out.out, out.err, str(e.value), repr(settings),
                 str(settings), settings.model_dump_json(), repr(settings.kafka_security))
