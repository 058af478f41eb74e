"""Two workers' postgres sinks starting together (found by the at-least-once chaos run): one
creates the table between the other's two catalog reads. The other must see its columns, not
an existing table with none, which failed the write as "needs a primary key" and dead-lettered
the batch. No database: the connection is a stand-in."""

from __future__ import annotations

from typing import Any

import pytest
from streamflow_connector_sql._pg import table_columns

pytestmark = pytest.mark.timeout(30)


class CreatedMeanwhile:
    """No columns at the first read; by the existence check, the table is there."""

    def __init__(self) -> None:
        self.reads = 0

    async def fetch(self, sql: str, *args: Any) -> list[tuple[str, str]]:
        self.reads += 1
        return [] if self.reads == 1 else [("_key", "text"), ("total", "double precision")]

    async def fetchval(self, sql: str, *args: Any) -> bool:
        return True


class Missing:
    async def fetch(self, sql: str, *args: Any) -> list[tuple[str, str]]:
        return []

    async def fetchval(self, sql: str, *args: Any) -> bool:
        return False


async def test_a_table_created_between_the_reads_has_its_columns() -> None:
    assert await table_columns(CreatedMeanwhile(), "t") == {"_key": "text",
                                                            "total": "double precision"}


async def test_a_missing_table_is_none() -> None:
    assert await table_columns(Missing(), "t") is None
