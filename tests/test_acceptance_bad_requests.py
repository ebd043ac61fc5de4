"""Acceptance: a malformed chat body sent with the openai SDK to a translating (native) provider
is a 400 the SDK raises as BadRequestError, as OpenAI would answer, never a 500, and it never
reaches the upstream."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import openai
import pytest

from tests.fakes.ai21_upstream import FakeAI21
from tests.fakes.anthropic_upstream import FakeAnthropic
from tests.fakes.bedrock_upstream import FakeBedrock
from tests.fakes.cohere_upstream import FakeCohere
from tests.fakes.gemini_upstream import FakeGoogle
from tests.fakes.replicate_upstream import FakeReplicate

MODELS = {
    "anthropic": "claude-sonnet-4-20250514",
    "gemini": "gemini-2.0-flash",
    "bedrock": "anthropic.claude-3-5-sonnet-20241022-v2:0",
    "cohere": "command-a-03-2025",
    "ai21": "jamba-large",
    "replicate": "meta/meta-llama-3-8b-instruct",
}
USER = {"role": "user", "content": "hi"}
CASES: dict[str, tuple[dict[str, Any], str]] = {
    "stop is a number": ({"stop": 5}, "stop"),
    "n is a string": ({"n": "2"}, "n"),
    "message is a string": ({"messages": ["hi"]}, "messages[0]"),
    "content is a number": ({"messages": [{"role": "user", "content": 5}]}, "messages[0].content"),
    "tools is a string": ({"tools": "get_weather"}, "tools"),
}


@pytest.fixture
async def fakes() -> AsyncIterator[dict[str, Any]]:
    made = {
        "anthropic": await FakeAnthropic().start(),
        "gemini": await FakeGoogle().start(),
        "bedrock": await FakeBedrock().start(),
        "cohere": await FakeCohere().start(),
        "ai21": await FakeAI21().start(),
        "replicate": await FakeReplicate().start(),
    }
    yield made
    for fake in made.values():
        await fake.stop()


@pytest.fixture
async def client(gateway_factory, fakes) -> AsyncIterator[openai.AsyncOpenAI]:
    env = {
        "ANTHROPIC_API_KEY": fakes["anthropic"].api_key,
        "ANTHROPIC_BASE_URL": fakes["anthropic"].host_url,
        "GEMINI_API_KEY": fakes["gemini"].api_key,
        "GEMINI_BASE_URL": fakes["gemini"].base_url,
        "AWS_REGION": fakes["bedrock"].region,
        "AWS_ACCESS_KEY_ID": fakes["bedrock"].access_key_id,
        "AWS_SECRET_ACCESS_KEY": fakes["bedrock"].secret_access_key,
        "BEDROCK_BASE_URL": fakes["bedrock"].base_url,
        "COHERE_API_KEY": fakes["cohere"].api_key,
        "COHERE_BASE_URL": fakes["cohere"].base_url,
        "AI21_API_KEY": fakes["ai21"].api_key,
        "AI21_BASE_URL": fakes["ai21"].base_url,
        "REPLICATE_API_TOKEN": fakes["replicate"].api_token,
        "REPLICATE_BASE_URL": fakes["replicate"].base_url,
    }
    running = await gateway_factory(env=env)
    sdk = openai.AsyncOpenAI(api_key="sk-placeholder", base_url=running.proxy_url + "/v1", max_retries=0)
    yield sdk
    await sdk.close()


@pytest.mark.parametrize("provider", list(MODELS))
async def test_malformed_bodies_are_400s(client, fakes, provider: str) -> None:
    for name, (fields, param) in CASES.items():
        body = {"model": MODELS[provider], "messages": [USER], **fields}
        with pytest.raises(openai.BadRequestError) as info:
            await client.chat.completions.create(**body)
        assert info.value.body["param"] == param, name
        assert info.value.body["type"] == "invalid_request_error", name
    assert fakes[provider].requests == []
