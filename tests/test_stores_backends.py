"""Store backends chosen from the environment, plus the helpers other state tests import:
`store_env` gives each test a fresh memory / SQLite file / Postgres schema."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from ferro_proxy.config import ConfigError
from ferro_proxy.stores.hub import StoreHub, backend_choice
from tests.conftest import in_ci

PG_BASE = "postgresql://postgres@127.0.0.1:5432/test"
BACKENDS = ["memory", "sqlite", "postgres"]


async def postgres_reachable() -> bool:
    import asyncpg

    try:
        conn = await asyncpg.connect(PG_BASE, timeout=3)
    except (OSError, asyncpg.PostgresError, TimeoutError):
        return False
    await conn.close()
    return True


async def require_postgres() -> None:
    if not await postgres_reachable():
        message = f"Postgres is not reachable at {PG_BASE}: start it (see .ci/run)"
        if in_ci():
            pytest.fail(message)
        pytest.skip("SKIPPED LOUDLY: " + message)


async def new_pg_schema() -> tuple[str, str]:
    """A fresh schema; returns (schema, DSN whose search_path is that schema)."""
    import asyncpg

    schema = "ferro_t_" + secrets.token_hex(6)
    conn = await asyncpg.connect(PG_BASE)
    await conn.execute(f"CREATE SCHEMA {schema}")
    await conn.close()
    return schema, f"{PG_BASE}?search_path={schema}"


async def drop_pg_schema(schema: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(PG_BASE)
    await conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
    await conn.close()


def env_for(backend: str, dsn: str) -> dict[str, str]:
    env: dict[str, str] = {}
    for prefix in ("CONFIG_STORE", "API_KEY_STORE", "REQUEST_LOG_STORE"):
        env[f"{prefix}_BACKEND"] = backend
        if dsn:
            env[f"{prefix}_DSN"] = dsn
    return env


async def _fresh_env(backend: str, tmp_path: Path) -> AsyncIterator[dict[str, str]]:
    if backend == "memory":
        yield env_for("memory", "")
    elif backend == "sqlite":
        yield env_for("sqlite", str(tmp_path / "ferro-state.db"))
    else:
        await require_postgres()
        schema, dsn = await new_pg_schema()
        try:
            yield env_for("postgres", dsn)
        finally:
            await drop_pg_schema(schema)


@pytest.fixture(params=BACKENDS)
async def store_env(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[dict[str, str]]:
    """Environment variables that put every store on one backend, fresh for this test."""
    async for env in _fresh_env(request.param, tmp_path):
        yield env


@pytest.fixture(params=["sqlite", "postgres"])
async def persistent_env(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[dict[str, str]]:
    """Like `store_env`, for the backends that outlive a process."""
    async for env in _fresh_env(request.param, tmp_path):
        yield env


@pytest.fixture
async def hub(store_env: dict[str, str]) -> AsyncIterator[StoreHub]:
    opened = await StoreHub(store_env).open()
    yield opened
    await opened.close()


# ---------------------------------------------------------------- tests of the choice itself


def test_memory_is_the_default():
    assert backend_choice({}, "API_KEY_STORE") == ("memory", "")


def test_sql_backends_need_a_dsn_and_unknown_backends_are_named():
    with pytest.raises(ConfigError) as err:
        backend_choice({"API_KEY_STORE_BACKEND": "sqlite"}, "API_KEY_STORE")
    assert "API_KEY_STORE_DSN: required" in err.value.errors[0]
    with pytest.raises(ConfigError) as err:
        backend_choice({"CONFIG_STORE_BACKEND": "mongo"}, "CONFIG_STORE")
    assert "expected one of memory, sqlite, postgres" in err.value.errors[0]


async def test_an_unreachable_postgres_is_a_clear_startup_error_without_the_password():
    env = env_for("postgres", "postgresql://ferro:hunter2secret@127.0.0.1:1/none")
    with pytest.raises(ConfigError) as err:
        await StoreHub(env).open()
    message = "; ".join(err.value.errors)
    assert "cannot open the postgres store" in message
    assert "hunter2secret" not in message and "[REDACTED]" in message


async def test_stores_sharing_a_dsn_share_one_database(tmp_path: Path):
    opened = await StoreHub(env_for("sqlite", str(tmp_path / "one.db"))).open()
    try:
        assert len(opened._databases) == 1
        assert opened.health() == {"config": "sqlite", "keys": "sqlite", "logs": "sqlite"}
    finally:
        await opened.close()
