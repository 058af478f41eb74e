"""The three-node cluster's tests: ``pytest tests/cluster``, the CI's ``cluster`` phase.

The main run does not collect this folder (``norecursedirs`` in pyproject.toml): three more
JVMs beside the single broker would slow every other test. The fixture starts the cluster if
it is down (``streamflow services up kafka --brokers 3``), so nothing here skips.
"""

from __future__ import annotations

import pytest

from tests.chaos.conftest import chaos_seed as chaos_seed


@pytest.fixture(scope="session")
def cluster_bootstrap() -> str:
    from streamflow import devservices as services

    services.up([services.KAFKA_CLUSTER])  # starts any node that is down
    return services.KAFKA_CLUSTER_BOOTSTRAP
