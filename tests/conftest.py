"""Shared fixtures: fake upstreams and a gateway on ephemeral loopback ports."""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from ferro_proxy.config import GatewayConfig, config_from_data
from ferro_proxy.server import Running, start
from tests.fakes.openai_upstream import FakeOpenAI

StartGateway = Callable[..., Awaitable[Running]]


@pytest.fixture
async def fake_openai() -> AsyncIterator[FakeOpenAI]:
    fake = await FakeOpenAI().start()
    yield fake
    await fake.stop()


@pytest.fixture
async def gateway_factory() -> AsyncIterator[StartGateway]:
    started: list[Running] = []

    async def factory(
        config: dict[str, Any] | GatewayConfig | None = None, env: dict[str, str] | None = None, **kw: Any
    ) -> Running:
        cfg = config if isinstance(config, GatewayConfig) else config_from_data(config or {}, env=env or {})
        running = await start(cfg, listen="127.0.0.1:0", admin_listen="127.0.0.1:0", env=env or {}, **kw)
        started.append(running)
        return running

    yield factory
    for running in started:
        await running.drain_and_stop(0.5)


@pytest.fixture
async def gateway(gateway_factory: StartGateway, fake_openai: FakeOpenAI) -> Running:
    """A gateway with only OPENAI_API_KEY and OPENAI_BASE_URL set, pointed at the fake."""
    return await gateway_factory(
        env={"OPENAI_API_KEY": "sk-test-upstream-key", "OPENAI_BASE_URL": fake_openai.base_url}
    )


@pytest.fixture
def openai_client(gateway: Running):
    import openai

    return openai.AsyncOpenAI(api_key="sk-placeholder", base_url=gateway.proxy_url + "/v1", max_retries=0)


REDIS_URL = "redis://127.0.0.1:6379/0"


@pytest.fixture
async def redis_prefix() -> AsyncIterator[tuple[Any, str]]:
    """A real Redis client and a key prefix for this test alone, cleaned up afterwards."""
    import redis.asyncio as redis_asyncio

    client = redis_asyncio.from_url(REDIS_URL, socket_connect_timeout=1)
    try:
        await client.ping()
    except Exception as exc:
        await client.aclose()
        if in_ci():
            pytest.fail(f"Redis at {REDIS_URL} is unreachable in CI: {exc}")
        pytest.skip(
            f"!!! SKIPPED: Redis at {REDIS_URL} is unreachable ({exc}); these tests need a real Redis"
        )
    prefix = f"ferro-test:{uuid.uuid4().hex}:"
    yield client, prefix
    keys = [k async for k in client.scan_iter(match=prefix + "*")]
    if keys:
        await client.delete(*keys)
    await client.aclose()


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")
