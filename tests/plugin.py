"""The test suite's pytest plugin: real services (never skipped in CI), isolated namespaces,
both transports.

Loaded for every test through ``addopts = "-p tests.plugin"`` in pyproject.toml, so that the
core's tests (``tests/``) and each built-in connector's own tests (``connectors/*/tests``)
share these fixtures and the CI hook. Test-only: nothing in ``streamflow`` imports it.
"""

from __future__ import annotations

import asyncio
import os
import re
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import settings as hypothesis_settings

from streamflow import Settings

# The fault seams' fixture (tests/faults.py), for every test.
from tests.faults import faults as faults


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """In CI a skipped test is a failure: every test needs its real services there."""
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    skipped = len(reporter.stats.get("skipped", [])) if reporter is not None else 0
    if os.environ.get("CI") == "true" and skipped and exitstatus == 0:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
        if reporter is not None:
            reporter.write_line(f"FAILED: {skipped} test(s) skipped; CI allows none", red=True)


# Property tests: CI runs a fixed, bounded set of examples (the same every run); a developer
# gets fresh random ones (HYPOTHESIS_PROFILE=ci reproduces CI). A test's own max_examples wins.
hypothesis_settings.register_profile("ci", derandomize=True, max_examples=50, deadline=None,
                                     database=None, print_blob=True)
hypothesis_settings.register_profile("dev", max_examples=50, deadline=None)
hypothesis_settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE") or (
    "ci" if os.environ.get("CI") == "true" else "dev"))


# Every topic a test or benchmark creates: a throwaway namespace or a prefixed raw topic.
TEST_TOPIC = re.compile(r"^([tpn][0-9a-f]{8,10}|bench[0-9a-f]{8})\.|^(test|kit|ext)-")


@pytest.fixture(scope="session")
def kafka_bootstrap() -> Iterator[str]:
    from streamflow import devservices as services
    from streamflow.devservices import delete_topics

    services.up(["kafka"])  # reuses a running broker; raises (fails the test) if it cannot start
    # Leftovers of killed runs go at the start, ours at the end; a developer running two
    # sessions against one broker sets STREAMFLOW_TEST_KEEP_TOPICS=1 so neither wipes the other.
    keep = os.environ.get("STREAMFLOW_TEST_KEEP_TOPICS") == "1"
    if not keep:
        asyncio.run(delete_topics(services.KAFKA_BOOTSTRAP, TEST_TOPIC.match))
    yield services.KAFKA_BOOTSTRAP
    if not keep:
        asyncio.run(delete_topics(services.KAFKA_BOOTSTRAP, TEST_TOPIC.match))


@pytest.fixture(scope="session")
def jaeger() -> dict[str, str]:
    from streamflow import devservices as services

    services.up(["jaeger"])
    return {"query": services.JAEGER_QUERY_URL, "otlp_http": services.OTLP_HTTP_ENDPOINT}


@pytest.fixture
def namespace() -> str:
    return "t" + uuid.uuid4().hex[:10]


@pytest.fixture(params=["embedded", "kafka"])
def settings(request: pytest.FixtureRequest, tmp_path: Path, namespace: str) -> Settings:
    """The same behavioural test runs on both transports."""
    bootstrap = request.getfixturevalue("kafka_bootstrap") if request.param == "kafka" else None
    return Settings(
        kafka_bootstrap=bootstrap, state_dir=tmp_path / "state", namespace=namespace,
        partitions=2, drain_timeout_s=60, http_port=0,
    )


@pytest.fixture(scope="session")
def postgres_dsn() -> str:
    from streamflow import devservices as services

    services.up(["postgres"])
    return services.POSTGRES_DSN


@pytest.fixture
def repo_root() -> Path:
    return Path(__file__).resolve().parent.parent
