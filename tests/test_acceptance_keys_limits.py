"""Acceptance: gateway keys made through the admin API, used from the openai SDK, together with
the rate-limit and budget filters; then revoked. /metrics is read after each step."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import anthropic
import openai
import pytest

from tests.fakes.openai_full_upstream import FullFakeOpenAI

BOOT = "boot-admin-key-for-tests"
UPSTREAM_KEY = "sk-upstream-secret-1234"
HI = [{"role": "user", "content": "hi"}]


@pytest.fixture
async def upstream() -> AsyncIterator[FullFakeOpenAI]:
    fake = await FullFakeOpenAI().start()
    yield fake
    await fake.stop()


@pytest.fixture
async def running(gateway_factory, upstream: FullFakeOpenAI):
    config = {
        "plugins": [
            {"name": "rate-limit", "type": "ratelimit", "config": {"key_limits": True}},
            {"name": "budget", "type": "ratelimit", "config": {"scope": "key", "key_budgets": True}},
        ]
    }
    env = {
        "OPENAI_API_KEY": UPSTREAM_KEY,
        "OPENAI_BASE_URL": upstream.base_url,
        "ADMIN_BOOTSTRAP_ENABLED": "true",
        "ADMIN_BOOTSTRAP_KEY": BOOT,
    }
    return await gateway_factory(config, env=env)


async def admin(running, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    async with (
        aiohttp.ClientSession() as session,
        session.request(
            method, running.admin_url + path, json=body, headers={"Authorization": f"Bearer {BOOT}"}
        ) as resp,
    ):
        return resp.status, await resp.json(content_type=None)


async def metrics(running) -> str:
    async with aiohttp.ClientSession() as session, session.get(running.admin_url + "/metrics") as resp:
        return await resp.text()


def sdk(running, key: str) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(api_key=key, base_url=running.proxy_url + "/v1", max_retries=0)


async def create_key(running, **policy: Any) -> tuple[str, str]:
    status, made = await admin(running, "POST", "/admin/keys", {"name": "app", "scopes": ["proxy"], **policy})
    assert status == 201, made
    assert made["key"].startswith("sk-ferro-")
    return made["id"], made["key"]


async def test_key_lifecycle_with_rate_limit(running, upstream: FullFakeOpenAI) -> None:
    key_id, key = await create_key(running, rpm_limit=2, allowed_models=["gpt-4o-mini"])
    anonymous = sdk(running, "sk-placeholder")
    try:  # an active proxy key in the store makes a gateway key necessary
        with pytest.raises(openai.AuthenticationError) as missing:
            await anonymous.chat.completions.create(model="gpt-4o-mini", messages=HI)
        assert missing.value.body["code"] == "missing_api_key"
    finally:
        await anonymous.close()
    client = sdk(running, key)
    try:
        for _ in range(2):
            raw = await client.chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=HI)
            assert raw.parse().choices[0].message.content
        assert raw.headers["x-ratelimit-limit-requests"] == "2"
        assert upstream.requests[-1].headers["Authorization"] == f"Bearer {UPSTREAM_KEY}"
        with pytest.raises(openai.RateLimitError) as limited:
            await client.chat.completions.create(model="gpt-4o-mini", messages=HI)
        assert limited.value.body["code"] == "rate_limit_exceeded"
        assert int(limited.value.response.headers["Retry-After"]) >= 1
        assert 'ferro_rate_limited_total{limit="requests"' in await metrics(running)

        with pytest.raises(openai.PermissionDeniedError) as denied:
            await client.chat.completions.create(model="gpt-4o", messages=HI)
        assert denied.value.body["code"] == "model_not_allowed"

        status, _ = await admin(running, "POST", f"/admin/keys/{key_id}/revoke")
        assert status == 200
        with pytest.raises(openai.AuthenticationError) as revoked:
            await client.chat.completions.create(model="gpt-4o-mini", messages=HI)
        assert revoked.value.body["code"] == "invalid_api_key"
        assert key not in str(revoked.value.body)
    finally:
        await client.close()
    text = await metrics(running)
    assert key not in text and UPSTREAM_KEY not in text and BOOT not in text


async def test_key_budget_stops_spending_streams_included(running, upstream: FullFakeOpenAI) -> None:
    # gpt-4o-mini: 12 prompt + 7 completion tokens cost about $0.0000060 per answer.
    _, key = await create_key(running, budget_usd=0.00001)
    client = sdk(running, key)
    try:
        await client.chat.completions.create(model="gpt-4o-mini", messages=HI)
        stream = await client.chat.completions.create(model="gpt-4o-mini", messages=HI, stream=True)
        text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
        assert text == upstream.reply_text
        calls = len(upstream.requests)
        with pytest.raises(openai.APIStatusError) as refused:
            await client.chat.completions.create(model="gpt-4o-mini", messages=HI)
        assert refused.value.status_code == 402
        assert refused.value.body["code"] == "insufficient_quota"
        assert len(upstream.requests) == calls
    finally:
        await client.close()
    assert "ferro_cost_usd_total" in await metrics(running)


async def test_count_tokens_needs_the_gateway_key_too(running) -> None:
    """The local count_tokens estimate must not be a way around gateway-key auth."""
    _, key = await create_key(running)
    request = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "count me"}]}
    anonymous = anthropic.AsyncAnthropic(api_key="sk-placeholder", base_url=running.proxy_url, max_retries=0)
    keyed = anthropic.AsyncAnthropic(api_key=key, base_url=running.proxy_url, max_retries=0)
    try:
        with pytest.raises(anthropic.AuthenticationError) as info:
            await anonymous.messages.count_tokens(**request)
        assert info.value.body["error"]["type"] == "authentication_error"
        with pytest.raises(anthropic.AuthenticationError):
            await anthropic.AsyncAnthropic(
                api_key="sk-ferro-not-a-real-key", base_url=running.proxy_url, max_retries=0
            ).messages.count_tokens(**request)
        counted = await keyed.messages.count_tokens(**request)
        assert counted.input_tokens > 0
    finally:
        await anonymous.close()
        await keyed.close()


async def test_models_list_needs_the_gateway_key(running) -> None:
    await create_key(running)
    client = sdk(running, "sk-placeholder")
    try:
        with pytest.raises(openai.AuthenticationError):
            await client.models.list()
    finally:
        await client.close()
