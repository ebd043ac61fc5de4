"""Acceptance: input guardrails also screen OpenAI Responses API calls (`client.responses.create`),
which reach the gateway as a `/v1/*` pass-through: an app moving from chat.completions to the
Responses API must not take its prompts around pii-redact, secret-scan or max-token."""

from __future__ import annotations

from collections.abc import AsyncIterator

import openai
import pytest

from tests.fakes.openai_full_upstream import FullFakeOpenAI

GITHUB_TOKEN = "ghp_" + "a1B2c3D4e5F6g7H8i9J0k1L2m3N4o5P6q7R8"
PLUGINS = [
    {"name": "pii-redact", "config": {"entities": ["email"]}},
    {"name": "secret-scan", "config": {"action": "block"}},
    {"name": "max-token", "config": {"max_tokens": 1000}},
]


@pytest.fixture
async def upstream() -> AsyncIterator[FullFakeOpenAI]:
    fake = await FullFakeOpenAI().start()
    yield fake
    await fake.stop()


@pytest.fixture
async def client(gateway_factory, upstream: FullFakeOpenAI) -> AsyncIterator[openai.AsyncOpenAI]:
    running = await gateway_factory(
        {"plugins": PLUGINS}, env={"OPENAI_API_KEY": "sk-up", "OPENAI_BASE_URL": upstream.base_url}
    )
    sdk = openai.AsyncOpenAI(api_key="sk-placeholder", base_url=running.proxy_url + "/v1", max_retries=0)
    yield sdk
    await sdk.close()


@pytest.mark.parametrize("stream", [False, True])
async def test_pii_is_redacted_before_it_leaves(client, upstream: FullFakeOpenAI, stream: bool) -> None:
    response = await client.responses.create(
        model="gpt-4o-mini",
        instructions="Reply to ops@example.com",
        input=[
            {"role": "user", "content": "Write to bob@example.com"},
            {"role": "user", "content": [{"type": "input_text", "text": "cc alice@example.org"}]},
        ],
        stream=stream,
    )
    if stream:
        kinds = [event.type async for event in response]
        assert kinds[-1] == "response.completed"
    else:
        assert response.output_text == upstream.reply_text
    sent = upstream.requests[-1].body
    assert sent["instructions"] == "Reply to [EMAIL]"
    assert sent["input"][0]["content"] == "Write to [EMAIL]"
    assert sent["input"][1]["content"][0]["text"] == "cc [EMAIL]"
    assert b"@example" not in upstream.requests[-1].raw


async def test_a_secret_in_plain_input_is_refused(client, upstream: FullFakeOpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        await client.responses.create(model="gpt-4o-mini", input=f"my token is {GITHUB_TOKEN}")
    assert info.value.body["code"] == "request_rejected"
    assert "github_token" in info.value.message and GITHUB_TOKEN not in info.value.message
    assert upstream.requests == []


async def test_tool_output_items_are_screened(client, upstream: FullFakeOpenAI) -> None:
    with pytest.raises(openai.BadRequestError):
        await client.responses.create(
            model="gpt-4o-mini",
            input=[
                {"role": "user", "content": "look it up"},
                {"type": "function_call", "call_id": "c1", "name": "lookup", "arguments": "{}"},
                {"type": "function_call_output", "call_id": "c1", "output": f"found {GITHUB_TOKEN}"},
            ],
        )
    assert upstream.requests == []


async def test_max_output_tokens_is_held_to_the_limit(client, upstream: FullFakeOpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        await client.responses.create(model="gpt-4o-mini", input="hi", max_output_tokens=5000)
    assert "max_tokens" in info.value.message
    assert upstream.requests == []
