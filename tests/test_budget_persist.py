"""budget on real Postgres and Redis: spend survives a restart and is shared by a fleet."""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import AsyncIterator
from typing import Any

import openai
import pytest

from ferro_proxy.config import config_from_data
from ferro_proxy.server import start
from tests.conftest import in_ci

PG_DSN = "postgresql://postgres@127.0.0.1:5432/test"
REDIS_URL = "redis://127.0.0.1:6379/0"
HI = [{"role": "user", "content": "hi"}]
PER_REQUEST = 0.000006  # 12 + 7 tokens of gpt-4o-mini at catalog prices


def unreachable(what: str, exc: BaseException) -> None:
    if in_ci():
        pytest.fail(f"{what} is unreachable in CI: {exc}")
    pytest.skip(f"!!! SKIPPED: {what} is unreachable ({exc}); these tests need it for real")


@pytest.fixture
async def postgres_table() -> AsyncIterator[dict[str, Any]]:
    import asyncpg

    try:
        conn = await asyncpg.connect(PG_DSN, timeout=2)
    except Exception as exc:
        unreachable(f"Postgres at {PG_DSN}", exc)
    table = f"ferro_budget_test_{uuid.uuid4().hex[:12]}"
    yield {"backend": "postgres", "dsn": PG_DSN, "table": table, "_conn": conn}
    await conn.execute(f"DROP TABLE IF EXISTS {table}")
    await conn.close()


@pytest.fixture
async def redis_prefix() -> AsyncIterator[dict[str, Any]]:
    import redis.asyncio as redis_asyncio

    client = redis_asyncio.from_url(REDIS_URL, socket_connect_timeout=1)
    try:
        await client.ping()
    except Exception as exc:
        await client.aclose()
        unreachable(f"Redis at {REDIS_URL}", exc)
    prefix = f"ferro-test:{uuid.uuid4().hex}:"
    yield {"backend": "redis", "dsn": REDIS_URL, "key_prefix": prefix, "_redis": client}
    keys = [k async for k in client.scan_iter(match=prefix + "*")]
    if keys:
        await client.delete(*keys)
    await client.aclose()


@pytest.fixture(params=["postgres", "redis"])
def backend(request) -> dict[str, Any]:
    return request.getfixturevalue("postgres_table" if request.param == "postgres" else "redis_prefix")


def budget_cfg(fake, backend: dict[str, Any], **budget):
    cfg = {k: v for k, v in backend.items() if not k.startswith("_")}
    data = {"plugins": [{"name": "budget", "config": {**cfg, **budget}}]}
    return config_from_data(data, env=env_of(fake))


def env_of(fake) -> dict[str, str]:
    return {"OPENAI_API_KEY": "sk-test-upstream-key", "OPENAI_BASE_URL": fake.base_url}


def client(gw, key: str = "sk-client-one") -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(api_key=key, base_url=gw.proxy_url + "/v1", max_retries=0)


async def settle(gw) -> None:
    """Wait for the spend writes a gateway runs in the background after answering."""
    for f in gw.gateway.runtime.chain.filters:
        if f.name == "budget":
            await f._writes.drain()


async def chat(c, **kw):
    return await c.chat.completions.create(model="gpt-4o-mini", messages=HI, **kw)


async def refused(c) -> openai.APIStatusError:
    with pytest.raises(openai.APIStatusError) as info:
        await chat(c)
    return info.value


async def test_spend_survives_a_restart(fake_openai, backend):
    config = budget_cfg(fake_openai, backend, limit_usd=0.000015)
    first = await start(config, listen="127.0.0.1:0", admin_listen="127.0.0.1:0", env=env_of(fake_openai))
    try:
        c = client(first)
        await chat(c)
        stream = await chat(c, stream=True)
        assert "".join([ch.choices[0].delta.content or "" async for ch in stream]) == fake_openai.reply_text
    finally:
        await first.drain_and_stop(0.5)  # pending spend writes are flushed on close
    second = await start(config, listen="127.0.0.1:0", admin_listen="127.0.0.1:0", env=env_of(fake_openai))
    try:
        c = client(second)
        await chat(c)  # $0.000012 of $0.000015 spent before the restart
        err = await refused(c)
        assert err.status_code == 402 and err.body["code"] == "insufficient_quota"
    finally:
        await second.drain_and_stop(0.5)
    assert len(fake_openai.requests) == 3


async def test_sidecars_share_one_budget(gateway_factory, fake_openai, backend):
    config = budget_cfg(fake_openai, backend, limit_usd=0.00001, scope="user")
    a, b = await asyncio.gather(gateway_factory(config, env=env_of(fake_openai)),
                                gateway_factory(config, env=env_of(fake_openai)))  # fmt: skip
    ca, cb = client(a), client(b)
    await chat(ca, user="carol")
    await settle(a)
    await chat(cb, user="carol")
    await settle(b)
    for c in (ca, cb):
        with pytest.raises(openai.APIStatusError) as info:
            await chat(c, user="carol")
        assert info.value.status_code == 402
    await chat(cb, user="dave")


async def test_spend_is_stored_in_the_backend(gateway_factory, fake_openai, backend):
    gw = await gateway_factory(budget_cfg(fake_openai, backend, limit_usd=1.0), env=env_of(fake_openai))
    for _ in range(3):
        await chat(client(gw))
    await settle(gw)
    if backend["backend"] == "postgres":
        rows = await backend["_conn"].fetch(f"SELECT scope, period, spend_usd FROM {backend['table']}")
        assert len(rows) == 1 and rows[0]["period"].startswith("m")
        assert rows[0]["scope"].startswith("byok:") and "sk-client-one" not in rows[0]["scope"]
        spent = rows[0]["spend_usd"]
    else:
        redis = backend["_redis"]
        keys = [k async for k in redis.scan_iter(match=backend["key_prefix"] + "*")]
        assert len(keys) == 1 and b"sk-client-one" not in keys[0]
        assert 0 < await redis.ttl(keys[0]) <= 40 * 86400  # the month's spend expires after it
        spent = float(await redis.get(keys[0]))
    assert spent == pytest.approx(3 * PER_REQUEST)


async def test_backend_outage_fails_closed(gateway_factory, fake_openai, backend, caplog):
    down = {**backend, "dsn": "postgresql://postgres@127.0.0.1:1/test" if backend["backend"] == "postgres"
            else "redis://127.0.0.1:1/0", "timeout": 0.5}  # fmt: skip
    gw = await gateway_factory(budget_cfg(fake_openai, down, limit_usd=1.0), env=env_of(fake_openai))
    with caplog.at_level(logging.WARNING, logger="ferro_proxy.budget"):
        err = await refused(client(gw))
    assert err.status_code == 503 and err.body["code"] == "budget_unavailable"
    assert "127.0.0.1:1" not in err.body["message"]
    assert any("budget backend unavailable" in r.getMessage() for r in caplog.records)
    assert not fake_openai.requests


async def test_backend_outage_can_fail_open(gateway_factory, fake_openai, backend):
    down = {**backend, "dsn": "postgresql://postgres@127.0.0.1:1/test" if backend["backend"] == "postgres"
            else "redis://127.0.0.1:1/0", "timeout": 0.5}  # fmt: skip
    gw = await gateway_factory(
        budget_cfg(fake_openai, down, limit_usd=1.0, fail_open=True), env=env_of(fake_openai)
    )
    resp = await chat(client(gw))
    assert resp.choices[0].message.content == fake_openai.reply_text


async def test_many_sidecars_create_the_table_at_once(fake_openai, postgres_table):
    config = budget_cfg(fake_openai, postgres_table, limit_usd=1.0)
    fleet = await asyncio.gather(
        *(start(config, listen="127.0.0.1:0", admin_listen="127.0.0.1:0", env=env_of(fake_openai))
          for _ in range(4))
    )  # fmt: skip
    try:
        for gw in fleet:
            await chat(client(gw))
    finally:
        for gw in fleet:
            await gw.drain_and_stop(0.5)
    spent = await postgres_table["_conn"].fetchval(f"SELECT spend_usd FROM {postgres_table['table']}")
    assert spent == pytest.approx(4 * PER_REQUEST)
