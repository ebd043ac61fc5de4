"""Acceptance: output guardrails on streamed answers, seen through the openai and anthropic SDKs."""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
import anthropic
import openai
import pytest

from tests.fakes.anthropic_upstream import FakeAnthropic
from tests.fakes.openai_full_upstream import FullFakeOpenAI

SECRET_TEXT = "Your token is ghp_" + "a1B2c3D4e5F6g7H8i9J0k1L2m3N4o5P6q7R8" + " keep it safe"
PLUGINS = [
    {
        "name": "word-filter",
        "config": {"blocked_words": ["project titan"], "action": "redact", "apply_to": "output"},
    },
    {"name": "secret-scan", "config": {"action": "block", "apply_to": "output"}},
]


@pytest.fixture
async def upstreams() -> AsyncIterator[tuple[FullFakeOpenAI, FakeAnthropic]]:
    fake_openai = await FullFakeOpenAI().start()
    fake_anthropic = await FakeAnthropic().start()
    yield fake_openai, fake_anthropic
    await fake_openai.stop()
    await fake_anthropic.stop()


@pytest.fixture
async def running(gateway_factory, upstreams):
    fake_openai, fake_anthropic = upstreams
    env = {
        "OPENAI_API_KEY": "sk-up",
        "OPENAI_BASE_URL": fake_openai.base_url,
        "ANTHROPIC_API_KEY": fake_anthropic.api_key,
        "ANTHROPIC_BASE_URL": fake_anthropic.host_url,
    }
    return await gateway_factory({"plugins": PLUGINS}, env=env)


@pytest.fixture
async def client(running) -> AsyncIterator[openai.AsyncOpenAI]:
    sdk = openai.AsyncOpenAI(api_key="sk-placeholder", base_url=running.proxy_url + "/v1", max_retries=0)
    yield sdk
    await sdk.close()


@pytest.fixture
async def claude(running) -> AsyncIterator[anthropic.AsyncAnthropic]:
    sdk = anthropic.AsyncAnthropic(api_key="sk-placeholder", base_url=running.proxy_url, max_retries=0)
    yield sdk
    await sdk.close()


HI = [{"role": "user", "content": "tell me"}]


async def streamed_text(client: openai.AsyncOpenAI, model: str) -> str:
    stream = await client.chat.completions.create(model=model, messages=HI, stream=True)
    return "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])


@pytest.mark.parametrize("model", ["gpt-4o-mini", "claude-sonnet-4-20250514"])
async def test_redacted_in_a_stream_split_across_chunks(client, upstreams, model: str) -> None:
    text = "The plan called Project Titan ships soon"
    upstreams[0].reply_text = text
    upstreams[1].reply_text = text
    got = await streamed_text(client, model)
    assert got == "The plan called ************* ships soon"


@pytest.mark.parametrize("model", ["gpt-4o-mini", "claude-sonnet-4-20250514"])
async def test_blocked_stream_ends_in_an_error_and_never_leaks(
    client, running, upstreams, model: str
) -> None:
    upstreams[0].reply_text = SECRET_TEXT
    upstreams[1].reply_text = SECRET_TEXT
    received = ""
    with pytest.raises(openai.APIError) as info:
        stream = await client.chat.completions.create(model=model, messages=HI, stream=True)
        async for chunk in stream:
            received += "".join(c.delta.content or "" for c in chunk.choices)
    assert "ghp_" not in received
    assert "github_token" in str(info.value)
    async with aiohttp.ClientSession() as session, session.get(running.admin_url + "/metrics") as resp:
        metrics = await resp.text()
    assert 'ferro_guardrail_hits_total{action="block",filter="secret-scan",rule="github_token"}' in metrics
    assert "a1B2c3D4e5F6" not in metrics


@pytest.mark.parametrize("model", ["gpt-4o-mini", "claude-sonnet-4-20250514"])
async def test_messages_stream_is_screened_too(claude, upstreams, model: str) -> None:
    upstreams[0].reply_text = "About Project Titan we say nothing"
    upstreams[1].reply_text = "About Project Titan we say nothing"
    async with claude.messages.stream(model=model, max_tokens=64, messages=HI) as stream:
        text = "".join([t async for t in stream.text_stream])
    assert text == "About ************* we say nothing"


@pytest.mark.parametrize("model", ["gpt-4o-mini", "claude-sonnet-4-20250514"])
async def test_messages_stream_blocked_is_an_error_event(claude, upstreams, model: str) -> None:
    upstreams[0].reply_text = SECRET_TEXT
    upstreams[1].reply_text = SECRET_TEXT
    received = ""
    with pytest.raises(anthropic.APIStatusError):
        async with claude.messages.stream(model=model, max_tokens=64, messages=HI) as stream:
            async for text in stream.text_stream:
                received += text
    assert "ghp_" not in received
