"""Acceptance: sidecars starting together on one SQLite state file all open it.

Switching a new file to WAL takes an exclusive lock and SQLite reports "database is locked"
at once, without waiting out busy_timeout, to a second connection doing the same; before
the retry roughly one start in seven failed with a config error."""

from __future__ import annotations

import asyncio
from pathlib import Path

from ferro_proxy.stores.database import open_database


async def test_concurrent_opens_of_a_new_file_all_succeed(tmp_path: Path) -> None:
    for round_no in range(25):
        path = str(tmp_path / f"state-{round_no}.db")
        databases = await asyncio.gather(*(open_database("sqlite", path) for _ in range(4)))
        try:
            for db in databases:
                assert await db.execute("CREATE TABLE IF NOT EXISTS t (x INTEGER)") >= -1
        finally:
            for db in databases:
                await db.close()
