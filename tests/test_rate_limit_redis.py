"""rate-limit on a real Redis: a fleet of sidecars shares one set of limits."""

from __future__ import annotations

import asyncio
import logging

import openai
import pytest

from tests.conftest import REDIS_URL

HI = [{"role": "user", "content": "hi"}]


async def sidecar(gateway_factory, fake, prefix: str, limits, dsn: str = REDIS_URL, **config):
    cfg = {"backend": "redis", "dsn": dsn, "key_prefix": prefix, "limits": limits, **config}
    env = {"OPENAI_API_KEY": "sk-test-upstream-key", "OPENAI_BASE_URL": fake.base_url}
    return await gateway_factory({"plugins": [{"name": "rate-limit", "config": cfg}]}, env=env)


def client(gw, key: str = "sk-client-one") -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(api_key=key, base_url=gw.proxy_url + "/v1", max_retries=0)


async def chat(c, **kw):
    raw = await c.chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=HI, **kw)
    raw.parse()
    return raw.headers


async def test_two_sidecars_share_one_limit(gateway_factory, fake_openai, redis_prefix):
    _, prefix = redis_prefix
    limits = [{"scope": "key", "requests_per_minute": 2}]
    a = await sidecar(gateway_factory, fake_openai, prefix, limits)
    b = await sidecar(gateway_factory, fake_openai, prefix, limits)
    assert (await chat(client(a)))["x-ratelimit-remaining-requests"] == "1"
    assert (await chat(client(b)))["x-ratelimit-remaining-requests"] == "0"
    for gw in (a, b):
        with pytest.raises(openai.RateLimitError) as info:
            await chat(client(gw))
        assert info.value.body["code"] == "rate_limit_exceeded"
        assert int(info.value.response.headers["Retry-After"]) >= 29
    await chat(client(b, "sk-client-two"))  # another key has its own bucket


async def test_concurrent_requests_across_sidecars_never_exceed_the_limit(
    gateway_factory, fake_openai, redis_prefix
):
    _, prefix = redis_prefix
    limits = [{"scope": "global", "requests_per_minute": 10}]
    # fail closed, so a slow Redis shows up as an error here instead of as extra admissions
    sidecars = [
        await sidecar(gateway_factory, fake_openai, prefix, limits, fail_open=False) for _ in range(2)
    ]

    clients = [client(gw) for gw in sidecars]

    async def one(i: int) -> bool:
        try:
            await chat(clients[i % 2])
            return True
        except openai.RateLimitError:
            return False

    results = await asyncio.gather(*(one(i) for i in range(30)))
    assert sum(results) == 10
    assert len(fake_openai.requests) == 10


async def test_token_usage_is_shared_across_sidecars(gateway_factory, fake_openai, redis_prefix):
    _, prefix = redis_prefix
    limits = [{"scope": "key", "tokens_per_minute": 30}]
    a = await sidecar(gateway_factory, fake_openai, prefix, limits)
    b = await sidecar(gateway_factory, fake_openai, prefix, limits)
    stream = await client(a).chat.completions.create(model="gpt-4o-mini", messages=HI, stream=True)
    assert "".join([c.choices[0].delta.content or "" async for c in stream]) == fake_openai.reply_text
    for f in a.gateway.runtime.chain.filters:
        if f.name == "rate-limit":
            await f._writes.drain()  # the usage correction is written after the answer
    with pytest.raises(openai.RateLimitError) as info:
        await chat(client(b))
    assert int(info.value.response.headers["x-ratelimit-remaining-tokens"]) == 11


async def test_same_sidecar_sees_its_own_token_usage_at_once(gateway_factory, fake_openai, redis_prefix):
    _, prefix = redis_prefix
    a = await sidecar(gateway_factory, fake_openai, prefix, [{"scope": "key", "tokens_per_minute": 30}])
    await chat(client(a))
    with pytest.raises(openai.RateLimitError):
        await chat(client(a))


async def test_redis_outage_fails_open_with_a_warning(gateway_factory, fake_openai, redis_prefix, caplog):
    _, prefix = redis_prefix
    limits = [{"scope": "global", "requests_per_minute": 1}]
    gw = await sidecar(gateway_factory, fake_openai, prefix, limits, dsn="redis://127.0.0.1:1/0")
    with caplog.at_level(logging.WARNING, logger="ferro_proxy.rate_limit"):
        for _ in range(3):
            headers = await chat(client(gw))
            assert "x-ratelimit-limit-requests" not in headers
    warnings = [r for r in caplog.records if "rate-limit backend unavailable" in r.getMessage()]
    assert len(warnings) == 1 and "letting requests through" in warnings[0].getMessage()


async def test_redis_outage_can_fail_closed(gateway_factory, fake_openai, redis_prefix):
    _, prefix = redis_prefix
    limits = [{"scope": "global", "requests_per_minute": 100}]
    gw = await sidecar(
        gateway_factory, fake_openai, prefix, limits, dsn="redis://127.0.0.1:1/0", fail_open=False
    )
    with pytest.raises(openai.APIStatusError) as info:
        await chat(client(gw))
    assert info.value.status_code == 503 and info.value.body["code"] == "rate_limit_unavailable"
    assert not fake_openai.requests
