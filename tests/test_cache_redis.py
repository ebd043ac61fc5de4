"""response-cache on a real Redis: two gateways (two sidecars) share one cache."""

from __future__ import annotations

import logging

import openai

from tests.conftest import REDIS_URL

HI = [{"role": "user", "content": "hi"}]


async def sidecar(gateway_factory, fake, prefix: str, dsn: str = REDIS_URL):
    plugins = [{"name": "response-cache", "config": {"backend": "redis", "dsn": dsn, "key_prefix": prefix}}]
    env = {"OPENAI_API_KEY": "sk-test-upstream-key", "OPENAI_BASE_URL": fake.base_url}
    return await gateway_factory({"plugins": plugins}, env=env)


async def settle(gw) -> None:
    """Wait for the cache writes a sidecar runs in the background after answering."""
    for f in gw.gateway.runtime.chain.filters:
        if f.name == "response-cache":
            await f._writes.drain()


def client(gw) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(api_key="sk-client-one", base_url=gw.proxy_url + "/v1", max_retries=0)


async def test_sidecars_share_one_cache(gateway_factory, fake_openai, redis_prefix):
    redis, prefix = redis_prefix
    a = await sidecar(gateway_factory, fake_openai, prefix)
    b = await sidecar(gateway_factory, fake_openai, prefix)
    first = await client(a).chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=HI)
    assert first.headers["x-ferro-cache"] == "miss"
    await settle(a)  # the write runs after the answer
    second = await client(b).chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=HI)
    assert second.headers["x-ferro-cache"] == "hit"
    assert second.parse().choices[0].message.content == fake_openai.reply_text
    assert len(fake_openai.requests) == 1
    stored = [k async for k in redis.scan_iter(match=prefix + "*")]
    assert len(stored) == 1
    ttl_ms = await redis.pttl(stored[0])
    assert 0 < ttl_ms <= 300_000  # the default max_age, kept by Redis itself


async def test_stream_stored_by_one_sidecar_replays_on_another(gateway_factory, fake_openai, redis_prefix):
    _, prefix = redis_prefix
    a = await sidecar(gateway_factory, fake_openai, prefix)
    b = await sidecar(gateway_factory, fake_openai, prefix)
    stream = await client(a).chat.completions.create(model="gpt-4o-mini", messages=HI, stream=True)
    assert (
        "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
        == fake_openai.reply_text
    )
    await settle(a)
    raw = await client(b).chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=HI, stream=True, stream_options={"include_usage": True}
    )
    chunks = [c async for c in raw.parse()]
    assert raw.headers["x-ferro-cache"] == "hit"
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == fake_openai.reply_text
    assert chunks[-1].usage.total_tokens == 19
    assert len(fake_openai.requests) == 1


async def test_same_sidecar_reads_its_own_write_at_once(gateway_factory, fake_openai, redis_prefix):
    _, prefix = redis_prefix
    a = await sidecar(gateway_factory, fake_openai, prefix)
    c = client(a)
    await c.chat.completions.create(model="gpt-4o-mini", messages=HI)
    raw = await c.chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=HI)
    assert raw.headers["x-ferro-cache"] == "hit"


async def test_redis_outage_serves_without_the_cache(gateway_factory, fake_openai, redis_prefix, caplog):
    _, prefix = redis_prefix
    gw = await sidecar(gateway_factory, fake_openai, prefix, dsn="redis://127.0.0.1:1/0")
    with caplog.at_level(logging.WARNING, logger="ferro_proxy.cache"):
        for _ in range(2):
            raw = await client(gw).chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=HI)
            assert raw.headers["x-ferro-cache"] == "miss"
            assert raw.parse().choices[0].message.content == fake_openai.reply_text
    warnings = [r for r in caplog.records if "response cache backend unavailable" in r.getMessage()]
    assert len(warnings) == 1, "one warning per interval, not one per request"
    assert len(fake_openai.requests) == 2
