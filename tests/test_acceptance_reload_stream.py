"""Acceptance: config changes through the admin API while answers are streaming, with filters
whose state must survive the swap (rate-limit buckets, budget spend), and /metrics after."""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
import anthropic
import openai
import pytest

from tests.fakes.openai_full_upstream import FullFakeOpenAI
from tests.test_admin import BOOT, Admin, admin_env

HI = [{"role": "user", "content": "hi"}]
PLUGINS = [
    {
        "name": "rate-limit",
        "type": "ratelimit",
        "config": {"limits": [{"scope": "global", "requests_per_minute": 3}]},
    },
    {
        "name": "word-filter",
        "config": {"blocked_words": ["gadget"], "action": "redact", "apply_to": "output"},
    },
]


@pytest.fixture
async def upstream() -> AsyncIterator[FullFakeOpenAI]:
    fake = await FullFakeOpenAI(reply_text="the gadget is ready now").start()
    yield fake
    await fake.stop()


@pytest.fixture
async def running(gateway_factory, upstream: FullFakeOpenAI):
    return await gateway_factory(
        {"aliases": {"fast": "gpt-4o-mini"}, "plugins": PLUGINS}, env=admin_env(upstream.base_url)
    )


@pytest.fixture
async def client(running) -> AsyncIterator[openai.AsyncOpenAI]:
    sdk = openai.AsyncOpenAI(api_key="sk-placeholder", base_url=running.proxy_url + "/v1", max_retries=0)
    yield sdk
    await sdk.close()


async def metrics(running) -> str:
    async with aiohttp.ClientSession() as session, session.get(running.admin_url + "/metrics") as resp:
        return await resp.text()


async def test_stream_in_flight_keeps_its_chain_across_a_reload(client, running, upstream) -> None:
    upstream.script = [{"chunk_delay": 0.05}]
    stream = await client.chat.completions.create(model="fast", messages=HI, stream=True)
    first = await stream.__anext__()
    patch = {"aliases": {"fast": "gpt-4o", "smart": "gpt-4o"}, "plugins": [PLUGINS[0]]}
    status, body = await Admin(running.admin_url, BOOT).call("PUT", "/admin/config", patch)
    assert status == 200, body
    rest = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
    assert (first.choices[0].delta.content or "") + rest == "the ****** is ready now"
    after = await client.chat.completions.create(model="smart", messages=HI)
    assert after.choices[0].message.content == "the gadget is ready now"  # word-filter gone
    assert upstream.requests[-1].body["model"] == "gpt-4o"
    assert 'ferro_config_reloads_total{result="success"} 1.0' in await metrics(running)


async def test_rate_limit_state_survives_an_unrelated_change(client, running) -> None:
    for _ in range(3):
        await client.chat.completions.create(model="fast", messages=HI)
    status, body = await Admin(running.admin_url, BOOT).call(
        "PUT", "/admin/config", {"aliases": {"quick": "gpt-4o-mini"}}
    )
    assert status == 200, body
    with pytest.raises(openai.RateLimitError):
        await client.chat.completions.create(model="quick", messages=HI)
    assert 'ferro_rate_limited_total{limit="requests",scope="global"} 1.0' in await metrics(running)


async def test_messages_stream_in_flight_survives_a_reload(running, upstream) -> None:
    upstream.script = [{"chunk_delay": 0.05}]
    claude = anthropic.AsyncAnthropic(api_key="sk-placeholder", base_url=running.proxy_url, max_retries=0)
    try:
        async with claude.messages.stream(model="fast", max_tokens=64, messages=HI) as stream:
            pieces = []
            async for text in stream.text_stream:
                if not pieces:
                    status, _ = await Admin(running.admin_url, BOOT).call("DELETE", "/admin/config")
                    assert status == 200
                pieces.append(text)
            final = await stream.get_final_message()
    finally:
        await claude.close()
    assert "".join(pieces) == "the ****** is ready now"
    assert final.stop_reason == "end_turn"
    assert running.gateway.config.aliases == {}


async def test_a_bad_patch_is_refused_and_changes_nothing(client, running) -> None:
    status, body = await Admin(running.admin_url, BOOT).call(
        "PUT", "/admin/config", {"targets": [{"virtual_key": "openai", "retry": {"attempts": "three"}}]}
    )
    assert status == 400
    assert "targets[0].retry.attempts" in body["error"]["message"]
    reply = await client.chat.completions.create(model="fast", messages=HI)
    assert reply.choices[0].message.content == "the ****** is ready now"
    assert 'ferro_config_reloads_total{result="error"} 1.0' in await metrics(running)
