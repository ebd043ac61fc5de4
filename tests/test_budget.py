"""budget (memory backend) through the gateway with the official OpenAI SDK.

Every answer of the fake upstream uses 12 prompt + 7 completion tokens; at gpt-4o-mini's
catalog price ($0.15 / $0.60 per million) that is $0.000006 per request.
"""

from __future__ import annotations

from datetime import UTC, datetime

import aiohttp
import openai
import pytest

from ferro_proxy.config import ConfigError, config_from_data
from ferro_proxy.stores.records import mint_key
from filters.budget import window_period

HI = [{"role": "user", "content": "hi"}]
PER_REQUEST = 0.000006


def budget_config(fake, **budget):
    return {"plugins": [{"name": "budget", "type": "ratelimit", "config": budget}]}


def upstream_env(fake) -> dict[str, str]:
    return {"OPENAI_API_KEY": "sk-test-upstream-key", "OPENAI_BASE_URL": fake.base_url}


async def budget_gateway(gateway_factory, fake, **budget):
    return await gateway_factory(budget_config(fake, **budget), env=upstream_env(fake))


def client(gw, key: str = "sk-client-one") -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(api_key=key, base_url=gw.proxy_url + "/v1", max_retries=0)


async def chat(c, **kw):
    raw = await c.chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=HI, **kw)
    raw.parse()
    return raw.headers


async def over_budget(c, **kw) -> openai.APIStatusError:
    with pytest.raises(openai.APIStatusError) as info:
        await chat(c, **kw)
    assert info.value.status_code == 402
    return info.value


async def test_spend_over_the_limit_is_refused_with_402(gateway_factory, fake_openai):
    gw = await budget_gateway(gateway_factory, fake_openai, limit_usd=0.00001)
    c = client(gw)
    first = await chat(c)
    assert first["x-ferro-budget-spent-usd"] == "0.00000000"
    second = await chat(c)
    assert float(second["x-ferro-budget-spent-usd"]) == pytest.approx(PER_REQUEST)
    assert second["x-ferro-budget-limit-usd"] == "1e-05"
    err = await over_budget(c)
    assert err.body["code"] == "insufficient_quota" and err.body["type"] == "insufficient_quota"
    assert "monthly budget" in err.body["message"] and "resets at" in err.body["message"]
    assert "sk-client-one" not in err.response.text
    assert len(fake_openai.requests) == 2


async def test_streamed_answers_are_charged(gateway_factory, fake_openai):
    gw = await budget_gateway(gateway_factory, fake_openai, limit_usd=0.00001)
    c = client(gw)
    for _ in range(2):
        stream = await c.chat.completions.create(model="gpt-4o-mini", messages=HI, stream=True)
        assert "".join([ch.choices[0].delta.content or "" async for ch in stream]) == fake_openai.reply_text
    await over_budget(c)


async def test_each_key_has_its_own_budget(gateway_factory, fake_openai):
    gw = await budget_gateway(gateway_factory, fake_openai, limit_usd=0.000005)
    await chat(client(gw, "sk-client-one"))
    await over_budget(client(gw, "sk-client-one"))
    await chat(client(gw, "sk-client-two"))


async def test_per_user_budgets_with_overrides(gateway_factory, fake_openai):
    gw = await budget_gateway(
        gateway_factory, fake_openai, scope="user", limit_usd=0.000005, limits={"vip": 1.0}, window="daily"
    )
    c = client(gw)
    await chat(c, user="alice")
    err = await over_budget(c, user="alice")
    assert "for this user" in err.body["message"] and "daily budget" in err.body["message"]
    await chat(c, user="bob")
    for _ in range(3):
        await chat(c, user="vip")
    await chat(c)  # requests without a user share one budget
    await over_budget(c)


async def test_a_gateway_keys_own_budget_applies(gateway_factory, fake_openai):
    gw = await budget_gateway(gateway_factory, fake_openai, window="total")
    record, token = mint_key("metered", ["proxy"], budget_usd=0.000005)
    await gw.gateway.services["keys"].create(record)
    free_record, free_token = mint_key("unmetered", ["proxy"])
    await gw.gateway.services["keys"].create(free_record)
    await chat(client(gw, token))
    err = await over_budget(client(gw, token))
    assert "does not reset" in err.body["message"]
    for _ in range(3):
        await chat(client(gw, free_token))  # no budget of its own and no limit_usd


async def test_spend_in_memory_survives_a_config_reload(gateway_factory, fake_openai):
    gw = await budget_gateway(gateway_factory, fake_openai, limit_usd=0.00001)
    c = client(gw)
    await chat(c)
    await chat(c)
    await over_budget(c)
    raised = config_from_data(budget_config(fake_openai, limit_usd=0.000013), env=upstream_env(fake_openai))
    await gw.gateway.apply(raised)
    await chat(c)  # $0.000012 spent < $0.000013
    await over_budget(c)


async def test_refusals_are_counted(gateway_factory, fake_openai):
    gw = await budget_gateway(gateway_factory, fake_openai, limit_usd=0.0)
    c = client(gw)
    await over_budget(c)
    async with aiohttp.ClientSession() as s:
        async with s.get(gw.admin_url + "/metrics") as r:
            text = await r.text()
    assert 'ferro_budget_exceeded_total{scope="key"} 1.0' in text
    assert not fake_openai.requests


@pytest.mark.parametrize(
    ("window", "now", "period", "resets"),
    [
        ("daily", datetime(2025, 3, 9, 23, 59, tzinfo=UTC), "d2025-03-09", datetime(2025, 3, 10, tzinfo=UTC)),
        ("weekly", datetime(2025, 3, 9, 12, tzinfo=UTC), "w2025-W10", datetime(2025, 3, 10, tzinfo=UTC)),
        ("weekly", datetime(2025, 3, 10, 0, 0, tzinfo=UTC), "w2025-W11", datetime(2025, 3, 17, tzinfo=UTC)),
        ("monthly", datetime(2024, 12, 31, 8, tzinfo=UTC), "m2024-12", datetime(2025, 1, 1, tzinfo=UTC)),
        ("monthly", datetime(2025, 2, 1, tzinfo=UTC), "m2025-02", datetime(2025, 3, 1, tzinfo=UTC)),
        ("total", datetime(2025, 2, 1, tzinfo=UTC), "total", None),
    ],
)
def test_windows_reset_at_utc_boundaries(window, now, period, resets):
    assert window_period(window, now) == (period, resets)


@pytest.mark.parametrize(
    ("config", "fragment"),
    [
        ({"scope": "user"}, "no budget to enforce"),
        ({"limit_usd": -1}, "limit_usd must be >= 0"),
        ({"limit_usd": 1, "window": "hourly"}, "plugins[0].config.window"),
        ({"limit_usd": 1, "backend": "postgres"}, "needs a dsn"),
        ({"limit_usd": 1, "backend": "postgres", "dsn": "redis://x"}, "must start with postgresql://"),
        ({"limit_usd": 1, "table": "spend; drop table x"}, "plain SQL identifier"),
    ],
)
async def test_bad_config_is_reported_with_its_path(gateway_factory, fake_openai, config, fragment):
    with pytest.raises(ConfigError) as info:
        await budget_gateway(gateway_factory, fake_openai, **config)
    assert fragment in str(info.value)
