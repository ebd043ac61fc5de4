"""Acceptance: the response cache with streaming and aliases, through the openai SDK."""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
import anthropic
import openai
import pytest

from tests.fakes.anthropic_upstream import FakeAnthropic
from tests.fakes.openai_full_upstream import FullFakeOpenAI


@pytest.fixture
async def upstream() -> AsyncIterator[FullFakeOpenAI]:
    fake = await FullFakeOpenAI().start()
    yield fake
    await fake.stop()


@pytest.fixture
async def running(gateway_factory, upstream: FullFakeOpenAI):
    config = {
        "aliases": {"fast": "gpt-4o-mini"},
        "plugins": [{"name": "response-cache", "type": "transform", "config": {"max_age": "5m"}}],
    }
    return await gateway_factory(
        config, env={"OPENAI_API_KEY": "sk-up", "OPENAI_BASE_URL": upstream.base_url}
    )


@pytest.fixture
async def client(running) -> AsyncIterator[openai.AsyncOpenAI]:
    sdk = openai.AsyncOpenAI(api_key="sk-placeholder", base_url=running.proxy_url + "/v1", max_retries=0)
    yield sdk
    await sdk.close()


def chat_calls(fake: FullFakeOpenAI) -> int:
    return sum(r.path.startswith("/v1/chat/completions") for r in fake.requests)


async def read_stream(raw) -> tuple[str, list]:
    stream = raw.parse()
    text, usage = "", []
    async for chunk in stream:
        if chunk.usage is not None:
            usage.append(chunk.usage)
        for choice in chunk.choices:
            text += choice.delta.content or ""
    return text, usage


async def test_json_answer_replays_as_a_stream_for_the_alias(client, upstream: FullFakeOpenAI) -> None:
    messages = [{"role": "user", "content": "cache me"}]
    first = await client.chat.completions.with_raw_response.create(model="fast", messages=messages)
    assert first.headers["x-ferro-cache"] == "miss"
    raw = await client.chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=messages, stream=True, stream_options={"include_usage": True}
    )
    assert raw.headers["x-ferro-cache"] == "hit"
    assert raw.headers["content-type"].startswith("text/event-stream")
    text, usage = await read_stream(raw)
    assert text == first.parse().choices[0].message.content == upstream.reply_text
    assert len(usage) == 1 and usage[0].total_tokens == 19
    assert chat_calls(upstream) == 1


async def test_streamed_answer_is_stored_and_served_as_json(client, upstream: FullFakeOpenAI) -> None:
    messages = [{"role": "user", "content": "stream then json"}]
    raw = await client.chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=messages, stream=True
    )
    assert raw.headers["x-ferro-cache"] == "miss"
    text, usage = await read_stream(raw)
    assert usage == []  # the client did not ask for it
    again = await client.chat.completions.with_raw_response.create(model="fast", messages=messages)
    assert again.headers["x-ferro-cache"] == "hit"
    assert again.parse().choices[0].message.content == text == upstream.reply_text
    assert chat_calls(upstream) == 1


async def test_a_broken_stream_is_not_cached(client, upstream: FullFakeOpenAI) -> None:
    messages = [{"role": "user", "content": "break me"}]
    upstream.script = [{"cut_after": 3}]
    with pytest.raises(openai.APIError):
        stream = await client.chat.completions.create(model="fast", messages=messages, stream=True)
        async for _ in stream:
            pass
    raw = await client.chat.completions.with_raw_response.create(model="fast", messages=messages)
    assert raw.headers["x-ferro-cache"] == "miss"
    assert raw.parse().choices[0].message.content == upstream.reply_text


async def test_cache_metrics(client, running) -> None:
    messages = [{"role": "user", "content": "count me"}]
    await client.chat.completions.create(model="fast", messages=messages)
    await client.chat.completions.create(model="fast", messages=messages)
    async with aiohttp.ClientSession() as session, session.get(running.admin_url + "/metrics") as resp:
        text = await resp.text()
    assert 'ferro_cache_requests_total{result="hit"} 1.0' in text
    assert 'ferro_cache_requests_total{result="miss"} 1.0' in text


async def test_native_messages_answer_replays_as_a_messages_stream(gateway_factory) -> None:
    """Anthropic SDK: a cached native answer asked for again as a stream is the same answer."""
    fake = await FakeAnthropic().start()
    try:
        running = await gateway_factory(
            {"plugins": [{"name": "response-cache", "type": "transform"}]},
            env={"ANTHROPIC_API_KEY": fake.api_key, "ANTHROPIC_BASE_URL": fake.host_url},
        )
        claude = anthropic.AsyncAnthropic(api_key="sk-placeholder", base_url=running.proxy_url, max_retries=0)
        request = {
            "model": "claude-sonnet-4-20250514",
            "max_tokens": 64,
            "messages": [{"role": "user", "content": "cache me natively"}],
        }
        try:
            first = await claude.messages.create(**request)
            async with claude.messages.stream(**request) as stream:
                text = "".join([t async for t in stream.text_stream])
                final = await stream.get_final_message()
                assert stream.response.headers["x-ferro-cache"] == "hit"
        finally:
            await claude.close()
        assert text == first.content[0].text == fake.reply_text
        assert final.stop_reason == "end_turn"
        assert final.usage.output_tokens == first.usage.output_tokens == 9
        assert len(fake.requests) == 1
    finally:
        await fake.stop()
