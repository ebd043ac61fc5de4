"""One SQL connection (SQLite) or pool (Postgres) behind a tiny common interface.

SQL is written once with `?` placeholders and `{real}`/`{serial}`/`{bigint}` type slots;
the Postgres side turns `?` into `$1, $2 …`. Migrations are versioned per component in
`ferro_schema_migrations` and applied under a lock that works across processes:
`pg_advisory_xact_lock` on Postgres, `BEGIN IMMEDIATE` on SQLite. So many sidecars may
start at once against one database and each migration still runs exactly once.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Awaitable, Sequence
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

from ferro_proxy.stores.status import StoreStatus, StoreUnavailable, is_outage

log = logging.getLogger("ferro_proxy.stores")

T = TypeVar("T")
_MIGRATION_LOCK_ID = 0x6665_7272_6F  # "ferro": one advisory lock for every ferro migration
_TYPES = {
    "sqlite": {"real": "REAL", "serial": "INTEGER PRIMARY KEY AUTOINCREMENT", "bigint": "INTEGER"},
    "postgres": {"real": "DOUBLE PRECISION", "serial": "BIGSERIAL PRIMARY KEY", "bigint": "BIGINT"},
}
_MIGRATIONS_TABLE = (
    "CREATE TABLE IF NOT EXISTS ferro_schema_migrations ("
    " component TEXT NOT NULL, version INTEGER NOT NULL, applied_at {real} NOT NULL,"
    " PRIMARY KEY (component, version))"
)


class _PoolFloorRetries(logging.Filter):
    """asyncpg logs a traceback each time it fails to refill its pool while Postgres is away;
    the store's status already reports the outage, throttled and without the driver's text."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("Failed to restore the pool connection floor")


_POOL_FLOOR_RETRIES = _PoolFloorRetries()


def redact_dsn(dsn: str) -> str:
    """A DSN fit for a log line: the password replaced."""
    try:
        parts = urlsplit(dsn)
    except ValueError:
        return "<unparseable dsn>"
    if parts.password:
        host = parts.hostname or ""
        if parts.port:
            host += f":{parts.port}"
        netloc = f"{parts.username}:[REDACTED]@{host}"
        return urlunsplit(parts._replace(netloc=netloc))
    return dsn


class Database:
    """Statements go through `execute`/`executemany`/`fetchall`, which keep `status` current
    and turn a store outage into `StoreUnavailable` (503); other errors pass unchanged."""

    dialect: str = ""
    status: StoreStatus

    def sql(self, text: str) -> str:
        return text.format(**_TYPES[self.dialect])

    async def _guarded(self, call: Awaitable[T]) -> T:
        try:
            result = await call
        except Exception as exc:
            if not is_outage(exc):
                raise
            self.status.failed(exc)
            raise StoreUnavailable() from None
        self.status.ok()
        return result

    async def execute(self, sql: str, *args: Any) -> int:
        return await self._guarded(self._execute(sql, *args))

    async def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        await self._guarded(self._executemany(sql, rows))

    async def fetchall(self, sql: str, *args: Any) -> list[dict[str, Any]]:
        return await self._guarded(self._fetchall(sql, *args))

    async def _execute(self, sql: str, *args: Any) -> int:
        raise NotImplementedError

    async def _executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        raise NotImplementedError

    async def _fetchall(self, sql: str, *args: Any) -> list[dict[str, Any]]:
        raise NotImplementedError

    async def fetchone(self, sql: str, *args: Any) -> dict[str, Any] | None:
        rows = await self.fetchall(sql, *args)
        return rows[0] if rows else None

    async def migrate(self, component: str, steps: Sequence[Sequence[str]]) -> None:
        """Apply `steps[i]` (a list of statements) as version i+1 of `component`, once."""
        raise NotImplementedError

    async def close(self) -> None:
        raise NotImplementedError


class SqliteDatabase(Database):
    dialect = "sqlite"

    def __init__(self, path: str) -> None:
        self.path = path
        self.status = StoreStatus("sqlite store")
        self._conn: Any = None
        self._lock = asyncio.Lock()  # one statement or transaction at a time on the connection

    async def open(self) -> SqliteDatabase:
        import aiosqlite

        self._conn = await aiosqlite.connect(self.path, isolation_level=None, timeout=30)
        try:
            self._conn.row_factory = aiosqlite.Row
            await self._conn.execute("PRAGMA busy_timeout=30000")
            await self._enable_wal()
            await self._conn.execute("PRAGMA synchronous=NORMAL")
        except BaseException:
            # An unclosed aiosqlite connection keeps a non-daemon thread: the process could not exit.
            await self.close()
            raise
        return self

    async def _enable_wal(self) -> None:
        """Switching a file to WAL needs an exclusive lock, and SQLite answers "database is
        locked" at once (no busy wait) when another process is opening the same new file, as
        sidecars starting together do: retry for a while."""
        import sqlite3

        deadline = time.monotonic() + 30
        while True:
            try:
                await self._conn.execute("PRAGMA journal_mode=WAL")
                return
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.02)

    async def _execute(self, sql: str, *args: Any) -> int:
        async with self._lock:
            cursor = await self._conn.execute(self.sql(sql), args)
            count = cursor.rowcount
            await cursor.close()
            return count

    async def _executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        async with self._lock:
            await self._conn.execute("BEGIN IMMEDIATE")
            try:
                await self._conn.executemany(self.sql(sql), rows)
            except BaseException:
                await self._conn.execute("ROLLBACK")
                raise
            await self._conn.execute("COMMIT")

    async def _fetchall(self, sql: str, *args: Any) -> list[dict[str, Any]]:
        async with self._lock:
            cursor = await self._conn.execute(self.sql(sql), args)
            rows = await cursor.fetchall()
            await cursor.close()
            return [dict(r) for r in rows]

    async def migrate(self, component: str, steps: Sequence[Sequence[str]]) -> None:
        async with self._lock:
            conn = self._conn
            await conn.execute("BEGIN IMMEDIATE")  # takes the write lock: other processes wait
            try:
                await conn.execute(self.sql(_MIGRATIONS_TABLE))
                cursor = await conn.execute(
                    "SELECT version FROM ferro_schema_migrations WHERE component = ?", (component,)
                )
                applied = {int(r[0]) for r in await cursor.fetchall()}
                await cursor.close()
                for version, statements in enumerate(steps, start=1):
                    if version in applied:
                        continue
                    for statement in statements:
                        await conn.execute(self.sql(statement))
                    await conn.execute(
                        "INSERT INTO ferro_schema_migrations (component, version, applied_at) VALUES (?, ?, ?)",
                        (component, version, time.time()),
                    )
                    log.info("migrated %s to version %d", component, version)
            except BaseException:
                await conn.execute("ROLLBACK")
                raise
            await conn.execute("COMMIT")

    async def close(self) -> None:
        if self._conn is not None:
            conn, self._conn = self._conn, None
            await conn.close()


_PLACEHOLDER = re.compile(r"\?")


class PostgresDatabase(Database):
    dialect = "postgres"

    def __init__(self, dsn: str, min_size: int = 1, max_size: int = 10) -> None:
        self.dsn = dsn
        self.status = StoreStatus("postgres store")
        self._pool: Any = None
        self._min, self._max = min_size, max_size
        self._cache: dict[str, str] = {}

    async def open(self) -> PostgresDatabase:
        import asyncpg

        logging.getLogger("asyncpg.pool").addFilter(_POOL_FLOOR_RETRIES)  # once: filters are a set

        self._pool = await asyncpg.create_pool(
            # A connect that hangs (a network that drops packets) fails in 10 s, not asyncpg's 60.
            self.dsn, min_size=self._min, max_size=self._max, command_timeout=30, timeout=10
        )
        return self

    def sql(self, text: str) -> str:
        cached = self._cache.get(text)
        if cached is None:
            counter = iter(range(1, 10_000))
            cached = _PLACEHOLDER.sub(lambda _: f"${next(counter)}", super().sql(text))
            self._cache[text] = cached
        return cached

    async def _execute(self, sql: str, *args: Any) -> int:
        status = await self._pool.execute(self.sql(sql), *args)
        tail = status.rsplit(" ", 1)[-1]
        return int(tail) if tail.isdigit() else 0

    async def _executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        await self._pool.executemany(self.sql(sql), rows)

    async def _fetchall(self, sql: str, *args: Any) -> list[dict[str, Any]]:
        return [dict(r) for r in await self._pool.fetch(self.sql(sql), *args)]

    async def migrate(self, component: str, steps: Sequence[Sequence[str]]) -> None:
        async with self._pool.acquire() as conn, conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1)", _MIGRATION_LOCK_ID)
            await conn.execute(super().sql(_MIGRATIONS_TABLE))
            rows = await conn.fetch(
                "SELECT version FROM ferro_schema_migrations WHERE component = $1", component
            )
            applied = {int(r["version"]) for r in rows}
            for version, statements in enumerate(steps, start=1):
                if version in applied:
                    continue
                for statement in statements:
                    await conn.execute(super().sql(statement))
                await conn.execute(
                    "INSERT INTO ferro_schema_migrations (component, version, applied_at) VALUES ($1, $2, $3)",
                    component,
                    version,
                    time.time(),
                )
                log.info("migrated %s to version %d", component, version)

    async def close(self) -> None:
        if self._pool is not None:
            pool, self._pool = self._pool, None
            await pool.close()


async def open_database(backend: str, dsn: str) -> Database:
    if backend == "sqlite":
        path = dsn.removeprefix("sqlite:///").removeprefix("sqlite://")
        return await SqliteDatabase(path).open()
    if backend == "postgres":
        return await PostgresDatabase(dsn).open()
    raise ValueError(f"unknown SQL backend {backend!r}")
