"""The embedded log syncs every commit (issue 18): what a source acks after its publish, such as
a file moved to ``processed/``, is on disk before the ack, so a power cut cannot lose it."""

from __future__ import annotations

from pathlib import Path

import pytest

from streamflow.model import OutMessage
from streamflow.transports._embedded import EmbeddedTransport

pytestmark = pytest.mark.timeout(60)

FULL = 2  # PRAGMA synchronous: 0 OFF, 1 NORMAL, 2 FULL, 3 EXTRA


async def test_the_embedded_log_commits_with_wal_and_synchronous_full(tmp_path: Path) -> None:
    for _ in range(2):  # a fresh file, then one already in WAL mode
        t = EmbeddedTransport(tmp_path / "log.db")
        await t.start()
        try:
            await t.publish([OutMessage("t", b"{}", b"k")])
            [(sync,)] = list(await t.db.execute_fetchall("PRAGMA synchronous"))
            [(mode,)] = list(await t.db.execute_fetchall("PRAGMA journal_mode"))
            assert (sync, str(mode).lower()) == (FULL, "wal")
        finally:
            await t.close()
