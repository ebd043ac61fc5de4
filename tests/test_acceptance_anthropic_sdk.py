"""Acceptance: the official `anthropic` SDK (AsyncAnthropic) on the gateway's `/v1/messages`.

Each test runs twice: answered natively by a fake Anthropic API, and translated to a fake
OpenAI upstream (`gpt-4o-mini`), because a Messages client should not notice the difference.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import anthropic
import pytest

from tests.fakes.anthropic_upstream import FakeAnthropic
from tests.fakes.openai_full_upstream import FullFakeOpenAI

WEATHER_TOOL = {
    "name": "get_weather",
    "description": "Weather for a city",
    "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}


@dataclass
class Backend:
    kind: str  # "native" | "openai"
    model: str
    anthropic: FakeAnthropic
    openai: FullFakeOpenAI

    def last_system(self) -> Any:
        if self.kind == "native":
            return self.anthropic.last.body["system"]
        return [m for m in self.openai.requests[-1].body["messages"] if m["role"] == "system"]

    def want_tool(self) -> None:
        self.anthropic.tool_use = {"name": "get_weather", "input": {"city": "Paris"}}
        self.openai.tool_call = {
            "id": "call_w1",
            "type": "function",
            "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
        }

    @property
    def reply_text(self) -> str:
        return self.anthropic.reply_text if self.kind == "native" else self.openai.reply_text

    def fail_next(self, status: int, message: str) -> None:
        if self.kind == "native":
            self.anthropic.script = [{"status": status, "message": message}]
        else:
            self.openai.script = [{"status": status, "message": message}]


@pytest.fixture(params=["native", "openai"])
async def backend(request) -> AsyncIterator[Backend]:
    fake_anthropic = await FakeAnthropic().start()
    fake_openai = await FullFakeOpenAI().start()
    model = "claude-sonnet-4-20250514" if request.param == "native" else "gpt-4o-mini"
    yield Backend(request.param, model, fake_anthropic, fake_openai)
    await fake_anthropic.stop()
    await fake_openai.stop()


@pytest.fixture
async def running(gateway_factory, backend: Backend):
    env = {
        "ANTHROPIC_API_KEY": backend.anthropic.api_key,
        "ANTHROPIC_BASE_URL": backend.anthropic.host_url,
        "OPENAI_API_KEY": "sk-openai-upstream",
        "OPENAI_BASE_URL": backend.openai.base_url,
    }
    return await gateway_factory(env=env)


@pytest.fixture
async def claude(running) -> AsyncIterator[anthropic.AsyncAnthropic]:
    client = anthropic.AsyncAnthropic(api_key="sk-placeholder", base_url=running.proxy_url, max_retries=0)
    yield client
    await client.close()


async def test_system_blocks_reach_the_model(claude, backend: Backend) -> None:
    message = await claude.messages.create(
        model=backend.model,
        max_tokens=256,
        system=[
            {"type": "text", "text": "You are terse."},
            {"type": "text", "text": "Answer in French.", "cache_control": {"type": "ephemeral"}},
        ],
        messages=[{"role": "user", "content": "Hello"}],
    )
    assert message.content[0].text == backend.reply_text
    assert message.role == "assistant" and message.stop_reason == "end_turn"
    system = backend.last_system()
    text = str(system)
    assert "You are terse." in text and "Answer in French." in text


async def test_tool_use_round_trip(claude, backend: Backend) -> None:
    backend.want_tool()
    messages: list[dict[str, Any]] = [{"role": "user", "content": "Weather in Paris?"}]
    first = await claude.messages.create(
        model=backend.model, max_tokens=256, tools=[WEATHER_TOOL], messages=messages
    )
    assert first.stop_reason == "tool_use"
    use = next(b for b in first.content if b.type == "tool_use")
    assert use.name == "get_weather" and use.input == {"city": "Paris"}
    messages += [
        {"role": "assistant", "content": [b.model_dump(exclude_none=True) for b in first.content]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": use.id, "content": "Sunny"}]},
    ]
    second = await claude.messages.create(
        model=backend.model, max_tokens=256, tools=[WEATHER_TOOL], messages=messages
    )
    assert second.stop_reason == "end_turn" and second.content[0].text == backend.reply_text


async def test_stream_helper_text_and_final_message(claude, backend: Backend) -> None:
    async with claude.messages.stream(
        model=backend.model, max_tokens=256, messages=[{"role": "user", "content": "Stream please"}]
    ) as stream:
        text = "".join([t async for t in stream.text_stream])
        final = await stream.get_final_message()
    assert text == backend.reply_text
    assert final.content[0].text == backend.reply_text
    assert final.stop_reason == "end_turn" and final.usage.output_tokens > 0


async def test_streamed_tool_use_is_assembled_by_the_helper(claude, backend: Backend) -> None:
    backend.want_tool()
    async with claude.messages.stream(
        model=backend.model,
        max_tokens=256,
        tools=[WEATHER_TOOL],
        tool_choice={"type": "tool", "name": "get_weather"},
        messages=[{"role": "user", "content": "Weather in Paris?"}],
    ) as stream:
        final = await stream.get_final_message()
    use = next(b for b in final.content if b.type == "tool_use")
    assert use.name == "get_weather" and use.input == {"city": "Paris"}
    assert final.stop_reason == "tool_use"


async def test_count_tokens(claude, backend: Backend) -> None:
    raw = await claude.messages.with_raw_response.count_tokens(
        model=backend.model,
        system="Be brief.",
        messages=[{"role": "user", "content": "How many tokens is this?"}],
    )
    count = await raw.parse()
    assert count.input_tokens > 0
    if backend.kind == "native":
        assert backend.anthropic.last.path == "/v1/messages/count_tokens"
        assert "x-ferro-token-count" not in raw.headers
    else:
        assert raw.headers["x-ferro-token-count"] == "estimate"
        assert backend.openai.requests == []


@pytest.mark.parametrize(
    ("status", "error_class"),
    [(400, anthropic.BadRequestError), (404, anthropic.NotFoundError), (429, anthropic.RateLimitError)],
)
async def test_upstream_errors_are_sdk_status_errors(claude, backend: Backend, status, error_class) -> None:
    backend.fail_next(status, f"upstream says no ({status})")
    with pytest.raises(error_class) as info:
        await claude.messages.create(
            model=backend.model, max_tokens=16, messages=[{"role": "user", "content": "hi"}]
        )
    assert info.value.status_code == status
    assert f"upstream says no ({status})" in info.value.message
    assert info.value.body["type"] == "error"


async def test_gateway_validation_error_is_a_bad_request(claude, backend: Backend) -> None:
    with pytest.raises(anthropic.BadRequestError) as info:
        await claude.messages.create(model=backend.model, max_tokens=16, messages=[])
    assert info.value.body["error"]["type"] == "invalid_request_error"


async def test_overloaded_upstream_is_an_api_status_error(claude, backend: Backend) -> None:
    backend.fail_next(529 if backend.kind == "native" else 503, "try again later")
    with pytest.raises(anthropic.APIStatusError) as info:
        await claude.messages.create(
            model=backend.model, max_tokens=16, messages=[{"role": "user", "content": "hi"}]
        )
    assert info.value.status_code == 502
    expected = "overloaded_error" if backend.kind == "native" else "api_error"
    assert info.value.body["type"] == "error" and info.value.body["error"]["type"] == expected
    assert "try again later" in info.value.message


@pytest.mark.parametrize("path", ["/v1/messages", "/v1/messages/count_tokens"])
async def test_malformed_system_is_a_400_in_anthropic_shape(running, backend: Backend, path: str) -> None:
    body = {
        "model": backend.model,
        "max_tokens": 16,
        "system": 5,
        "messages": [{"role": "user", "content": "hi"}],
    }
    headers = {"x-api-key": "sk-placeholder", "anthropic-version": "2023-06-01"}
    async with (
        aiohttp.ClientSession() as session,
        session.post(running.proxy_url + path, json=body, headers=headers) as resp,
    ):
        assert resp.status == 400
        answer = await resp.json()
    assert answer["type"] == "error" and answer["error"]["type"] == "invalid_request_error"
    assert "system" in answer["error"]["message"]
