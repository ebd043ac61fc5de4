"""rate-limit (memory backend) through the gateway with the official OpenAI SDK."""

from __future__ import annotations

import asyncio

import aiohttp
import openai
import pytest

from ferro_proxy.config import ConfigError
from filters.rate_limit import _go_duration

HI = [{"role": "user", "content": "hi"}]


async def limited_gateway(gateway_factory, fake, limits, aliases=None, **config):
    plugins = [{"name": "rate-limit", "type": "ratelimit", "config": {"limits": limits, **config}}]
    env = {"OPENAI_API_KEY": "sk-test-upstream-key", "OPENAI_BASE_URL": fake.base_url}
    return await gateway_factory({"plugins": plugins, "aliases": aliases or {}}, env=env)


def client(gw, key: str = "sk-client-one") -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(api_key=key, base_url=gw.proxy_url + "/v1", max_retries=0)


async def chat(c, **kw):
    kw.setdefault("model", "gpt-4o-mini")
    kw.setdefault("messages", HI)
    raw = await c.chat.completions.with_raw_response.create(**kw)
    raw.parse()
    return raw.headers


async def refused(c, **kw) -> openai.RateLimitError:
    with pytest.raises(openai.RateLimitError) as info:
        await chat(c, **kw)
    return info.value


async def test_requests_per_minute_refuses_with_openai_shaped_429(gateway_factory, fake_openai):
    gw = await limited_gateway(gateway_factory, fake_openai, [{"scope": "key", "requests_per_minute": 2}])
    c = client(gw)
    first = await chat(c)
    assert first["x-ratelimit-limit-requests"] == "2"
    assert first["x-ratelimit-remaining-requests"] == "1"
    assert first["x-ratelimit-reset-requests"] == "30s"
    second = await chat(c)
    assert second["x-ratelimit-remaining-requests"] == "0"
    err = await refused(c)
    assert err.status_code == 429
    assert err.body["code"] == "rate_limit_exceeded" and err.body["type"] == "rate_limit_error"
    assert "2 requests per minute per key" in err.body["message"]
    assert 29 <= int(err.response.headers["Retry-After"]) <= 30
    assert err.response.headers["x-ratelimit-remaining-requests"] == "0"
    assert len(fake_openai.requests) == 2, "a refused request never reaches the upstream"


async def test_burst_sets_the_bucket_size_and_the_bucket_refills(gateway_factory, fake_openai):
    gw = await limited_gateway(
        gateway_factory, fake_openai, [{"scope": "global", "requests_per_second": 2, "burst": 3}]
    )
    c = client(gw)
    for _ in range(3):
        await chat(c)
    err = await refused(c)
    assert err.response.headers["Retry-After"] == "1"
    await asyncio.sleep(0.6)  # 2 per second: one more request's worth after 0.5 s
    await chat(c)
    await refused(c)


async def test_scope_key_separates_callers(gateway_factory, fake_openai):
    gw = await limited_gateway(gateway_factory, fake_openai, [{"scope": "key", "requests_per_minute": 1}])
    await chat(client(gw, "sk-client-one"))
    await refused(client(gw, "sk-client-one"))
    await chat(client(gw, "sk-client-two"))


async def test_scope_global_is_shared_by_everyone(gateway_factory, fake_openai):
    gw = await limited_gateway(gateway_factory, fake_openai, [{"scope": "global", "requests_per_minute": 1}])
    await chat(client(gw, "sk-client-one"))
    err = await refused(client(gw, "sk-client-two"))
    assert "in total" in err.body["message"]


async def test_scope_user_uses_the_user_field(gateway_factory, fake_openai):
    gw = await limited_gateway(gateway_factory, fake_openai, [{"scope": "user", "requests_per_minute": 1}])
    c = client(gw)
    await chat(c, user="alice")
    await refused(c, user="alice")
    await chat(c, user="bob")
    await chat(c)  # requests without a user share one bucket ...
    await refused(c)  # ... so leaving the field out does not escape the limit


async def test_scope_model_counts_after_aliases(gateway_factory, fake_openai):
    gw = await limited_gateway(
        gateway_factory,
        fake_openai,
        [{"scope": "model", "requests_per_minute": 1}],
        aliases={"fast": "gpt-4o-mini"},
    )
    c = client(gw)
    await chat(c, model="gpt-4o-mini")
    err = await refused(c, model="fast")
    assert "per model" in err.body["message"]
    await chat(c, model="gpt-4o")


async def test_rule_limited_to_some_models(gateway_factory, fake_openai):
    gw = await limited_gateway(
        gateway_factory, fake_openai, [{"scope": "key", "requests_per_minute": 1, "models": ["gpt-4o"]}]
    )
    c = client(gw)
    for _ in range(3):
        headers = await chat(c, model="gpt-4o-mini")
        assert "x-ratelimit-limit-requests" not in headers
    await chat(c, model="gpt-4o")
    await refused(c, model="gpt-4o")


async def test_tokens_per_minute_counts_real_usage(gateway_factory, fake_openai):
    # Each answer of the fake upstream uses 19 tokens; a small request is estimated at ~17-21.
    gw = await limited_gateway(gateway_factory, fake_openai, [{"scope": "key", "tokens_per_minute": 30}])
    c = client(gw)
    headers = await chat(c)
    assert headers["x-ratelimit-limit-tokens"] == "30"
    assert "x-ratelimit-limit-requests" not in headers
    err = await refused(c)
    assert "30 tokens per minute per key" in err.body["message"]
    assert int(err.response.headers["x-ratelimit-remaining-tokens"]) == 11
    assert int(err.response.headers["Retry-After"]) >= 10


async def test_tokens_of_streamed_answers_count(gateway_factory, fake_openai):
    gw = await limited_gateway(gateway_factory, fake_openai, [{"scope": "key", "tokens_per_minute": 30}])
    c = client(gw)
    raw = await c.chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=HI, stream=True)
    assert raw.headers["x-ratelimit-limit-tokens"] == "30"
    assert "".join([ch.choices[0].delta.content or "" async for ch in raw.parse()]) == fake_openai.reply_text
    err = await refused(c)
    assert int(err.response.headers["x-ratelimit-remaining-tokens"]) == 11


async def test_failed_requests_give_their_token_estimate_back(gateway_factory, fake_openai):
    gw = await limited_gateway(gateway_factory, fake_openai, [{"scope": "key", "tokens_per_minute": 30}])
    c = client(gw)
    fake_openai.script.append({"status": 500})
    with pytest.raises(openai.InternalServerError):
        await chat(c)
    await chat(c)  # the failed request used no tokens
    await refused(c)


async def test_requests_and_tokens_together(gateway_factory, fake_openai):
    gw = await limited_gateway(
        gateway_factory,
        fake_openai,
        [{"scope": "key", "requests_per_minute": 100, "tokens_per_minute": 1000, "token_burst": 40}],
    )
    c = client(gw)
    headers = await chat(c)
    assert headers["x-ratelimit-limit-requests"] == "100" and headers["x-ratelimit-limit-tokens"] == "40"
    assert headers["x-ratelimit-remaining-requests"] == "99"
    await chat(c)  # 40 - 19: room for one more small request
    err = await refused(c)
    assert "tokens per minute" in err.body["message"] and "requests per minute" not in err.body["message"]


async def test_limits_apply_to_raw_http_clients_too(gateway_factory, fake_openai):
    gw = await limited_gateway(gateway_factory, fake_openai, [{"scope": "global", "requests_per_minute": 1}])
    async with aiohttp.ClientSession() as s:
        body = {"model": "gpt-4o-mini", "messages": HI}
        async with s.post(gw.proxy_url + "/v1/chat/completions", json=body) as r:
            assert r.status == 200
        async with s.post(gw.proxy_url + "/v1/chat/completions", json=body) as r:
            assert r.status == 429
            payload = await r.json()
            assert set(payload) == {"error"}
            assert set(payload["error"]) >= {"message", "type", "code"}
            assert r.headers["Retry-After"].isdigit()


async def test_refusals_are_counted(gateway_factory, fake_openai):
    gw = await limited_gateway(gateway_factory, fake_openai, [{"scope": "user", "requests_per_minute": 1}])
    c = client(gw)
    await chat(c, user="u1")
    await refused(c, user="u1")
    await refused(c, user="u1")
    async with aiohttp.ClientSession() as s:
        async with s.get(gw.admin_url + "/metrics") as r:
            text = await r.text()
    assert 'ferro_rate_limited_total{limit="requests",scope="user"} 2.0' in text


def test_reset_durations_are_written_like_openai_does():
    assert [_go_duration(s) for s in (0, 0.02, 1, 1.5, 17.28, 60, 360, 3725.5)] == [
        "0s",
        "20ms",
        "1s",
        "1.5s",
        "17.28s",
        "1m0s",
        "6m0s",
        "1h2m5.5s",
    ]


@pytest.mark.parametrize(
    ("config", "fragment"),
    [
        ({"limits": [{"scope": "key"}]}, "limits[0]: set requests_per_second"),
        ({"limits": [{"requests_per_minute": 0}]}, "limits[0]: requests per minute must be > 0"),
        ({"limits": [{"requests_per_minute": 5, "burst": 0}]}, "limits[0]: burst must be >= 1"),
        ({"limits": [{"scope": "team", "requests_per_minute": 5}]}, "plugins[0].config.limits[0].scope"),
        ({"limits": [], "key_limits": False}, "nothing to limit"),
        ({"backend": "redis", "limits": [{"requests_per_minute": 5}]}, "needs a dsn"),
    ],
)
async def test_bad_config_is_reported_with_its_path(gateway_factory, fake_openai, config, fragment):
    env = {"OPENAI_API_KEY": "sk-test-upstream-key", "OPENAI_BASE_URL": fake_openai.base_url}
    with pytest.raises(ConfigError) as info:
        await gateway_factory({"plugins": [{"name": "rate-limit", "config": config}]}, env=env)
    assert fragment in str(info.value)


async def test_a_gateway_keys_own_rpm_limit_applies(gateway_factory, fake_openai):
    from ferro_proxy.stores.records import mint_key

    gw = await limited_gateway(
        gateway_factory, fake_openai, [{"scope": "global", "requests_per_minute": 100}]
    )
    limited, limited_token = mint_key("limited", ["proxy"], rpm_limit=1)
    other, other_token = mint_key("other", ["proxy"])
    await gw.gateway.services["keys"].create(limited)
    await gw.gateway.services["keys"].create(other)
    c = client(gw, limited_token)
    headers = await chat(c)
    assert headers["x-ratelimit-limit-requests"] == "1"  # the tighter of the two limits
    err = await refused(c)
    assert "1 requests per minute for this key" in err.body["message"]
    assert limited_token not in err.response.text
    headers = await chat(client(gw, other_token))
    assert headers["x-ratelimit-limit-requests"] == "100"
