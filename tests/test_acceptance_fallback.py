"""Acceptance: fallback routing from a failing native provider to an OpenAI-compatible one,
seen from both SDKs, streamed and not, with /metrics after."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass

import aiohttp
import anthropic
import openai
import pytest

from tests.fakes.anthropic_upstream import FakeAnthropic
from tests.fakes.bedrock_upstream import FakeBedrock
from tests.fakes.gemini_upstream import FakeGoogle
from tests.fakes.openai_full_upstream import FullFakeOpenAI

HI = [{"role": "user", "content": "hi"}]
NATIVE_MODELS = {
    "anthropic": "claude-sonnet-4-20250514",
    "gemini": "gemini-2.0-flash",
    "bedrock": "anthropic.claude-3-5-sonnet-20241022-v2:0",
}


@dataclass
class Fakes:
    openai: FullFakeOpenAI
    anthropic: FakeAnthropic
    google: FakeGoogle
    bedrock: FakeBedrock

    def native(self, name: str):
        return {"anthropic": self.anthropic, "gemini": self.google, "bedrock": self.bedrock}[name]


@pytest.fixture
async def fakes() -> AsyncIterator[Fakes]:
    made = Fakes(
        await FullFakeOpenAI().start(),
        await FakeAnthropic().start(),
        await FakeGoogle().start(),
        await FakeBedrock().start(),
    )
    yield made
    for fake in (made.openai, made.anthropic, made.google, made.bedrock):
        await fake.stop()


def env_for(fakes: Fakes) -> dict[str, str]:
    return {
        "OPENAI_API_KEY": "sk-up",
        "OPENAI_BASE_URL": fakes.openai.base_url,
        "ANTHROPIC_API_KEY": fakes.anthropic.api_key,
        "ANTHROPIC_BASE_URL": fakes.anthropic.host_url,
        "GEMINI_API_KEY": fakes.google.api_key,
        "GEMINI_BASE_URL": fakes.google.base_url,
        "AWS_REGION": fakes.bedrock.region,
        "AWS_ACCESS_KEY_ID": fakes.bedrock.access_key_id,
        "AWS_SECRET_ACCESS_KEY": fakes.bedrock.secret_access_key,
        "BEDROCK_BASE_URL": fakes.bedrock.base_url,
    }


async def start(gateway_factory, fakes: Fakes, native: str):
    config = {
        "strategy": {"mode": "fallback"},
        "targets": [
            {"virtual_key": native, "model": NATIVE_MODELS[native]},
            {"virtual_key": "openai", "model": "gpt-4o-mini"},
        ],
    }
    return await gateway_factory(config, env=env_for(fakes))


async def metrics(running) -> str:
    async with aiohttp.ClientSession() as session, session.get(running.admin_url + "/metrics") as resp:
        return await resp.text()


@pytest.mark.parametrize("native", list(NATIVE_MODELS))
@pytest.mark.parametrize("stream", [False, True])
async def test_openai_sdk_falls_back(gateway_factory, fakes: Fakes, native: str, stream: bool) -> None:
    running = await start(gateway_factory, fakes, native)
    fakes.native(native).script = [{"status": 500, "message": "native down"}]
    client = openai.AsyncOpenAI(api_key="sk-placeholder", base_url=running.proxy_url + "/v1", max_retries=0)
    try:
        if stream:
            chunks = await client.chat.completions.create(model="whatever", messages=HI, stream=True)
            text = "".join([c.choices[0].delta.content or "" async for c in chunks if c.choices])
        else:
            reply = await client.chat.completions.create(model="whatever", messages=HI)
            text = reply.choices[0].message.content
    finally:
        await client.close()
    assert text == fakes.openai.reply_text
    assert len(fakes.native(native).requests) == 1
    assert fakes.openai.requests[-1].body["model"] == "gpt-4o-mini"
    text = await metrics(running)
    assert "ferro_router_attempts_total" in text and 'outcome="ok"' in text


@pytest.mark.parametrize("stream", [False, True])
async def test_messages_client_falls_back_from_native_anthropic(
    gateway_factory, fakes: Fakes, stream
) -> None:
    running = await start(gateway_factory, fakes, "anthropic")
    fakes.anthropic.script = [{"status": 529, "message": "overloaded"}]
    claude = anthropic.AsyncAnthropic(api_key="sk-placeholder", base_url=running.proxy_url, max_retries=0)
    try:
        if stream:
            async with claude.messages.stream(
                model="claude-sonnet-4-20250514", max_tokens=64, messages=HI
            ) as s:
                final = await s.get_final_message()
        else:
            final = await claude.messages.create(model="claude-sonnet-4-20250514", max_tokens=64, messages=HI)
    finally:
        await claude.close()
    assert final.content[0].text == fakes.openai.reply_text
    assert final.stop_reason == "end_turn"
    assert len(fakes.anthropic.requests) == 1


async def test_all_targets_down_names_each_without_secrets(gateway_factory, fakes: Fakes) -> None:
    running = await start(gateway_factory, fakes, "anthropic")
    fakes.anthropic.script = [{"status": 500}]
    fakes.openai.script = [{"status": 503}]
    client = openai.AsyncOpenAI(api_key="sk-placeholder", base_url=running.proxy_url + "/v1", max_retries=0)
    try:
        with pytest.raises(openai.APIStatusError) as info:
            await client.chat.completions.create(model="x", messages=HI)
    finally:
        await client.close()
    assert info.value.status_code == 502
    message = info.value.body["message"]
    assert "anthropic" in message and "openai" in message
    assert fakes.anthropic.api_key not in message and "sk-up" not in message
