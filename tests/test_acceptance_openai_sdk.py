"""Acceptance: the official `openai` SDK (AsyncOpenAI) against the gateway, the way apps use it.

Every call goes through a gateway started by `gateway_factory` to a fake OpenAI upstream that
speaks the real wire format, including the parts the SDK uses by default (base64 embeddings,
the Responses API, multipart uploads).
"""

from __future__ import annotations

import asyncio
import base64
import json
import struct
from collections.abc import AsyncIterator
from typing import Any

import openai
import pytest
from pydantic import BaseModel

from tests.fakes.anthropic_upstream import FakeAnthropic
from tests.fakes.openai_full_upstream import PNG_BYTES, VECTOR, FullFakeOpenAI

WEATHER_CALL = {
    "id": "call_w1",
    "type": "function",
    "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
}
WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather for a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}


@pytest.fixture
async def upstream() -> AsyncIterator[FullFakeOpenAI]:
    fake = await FullFakeOpenAI().start()
    yield fake
    await fake.stop()


@pytest.fixture
async def running(gateway_factory, upstream: FullFakeOpenAI):
    return await gateway_factory(
        {"request_timeout": 2},
        env={"OPENAI_API_KEY": "sk-upstream-secret", "OPENAI_BASE_URL": upstream.base_url},
    )


@pytest.fixture
async def client(running) -> AsyncIterator[openai.AsyncOpenAI]:
    sdk = openai.AsyncOpenAI(api_key="sk-placeholder", base_url=running.proxy_url + "/v1", max_retries=0)
    yield sdk
    await sdk.close()


def chat_requests(fake: FullFakeOpenAI) -> list[Any]:
    return [r for r in fake.requests if r.path.startswith("/v1/chat/completions")]


# ---------------------------------------------------------------- chat


async def test_tools_and_tool_choice_round_trip(client, upstream: FullFakeOpenAI) -> None:
    upstream.tool_call = WEATHER_CALL
    choice = {"type": "function", "function": {"name": "get_weather"}}
    first = await client.chat.completions.create(
        model="gpt-4o-mini",
        messages=[{"role": "user", "content": "Weather in Paris?"}],
        tools=[WEATHER_TOOL],
        tool_choice=choice,
    )
    call = first.choices[0].message.tool_calls[0]
    assert first.choices[0].finish_reason == "tool_calls"
    assert call.function.name == "get_weather" and json.loads(call.function.arguments) == {"city": "Paris"}
    assert chat_requests(upstream)[-1].body["tool_choice"] == choice
    second = await client.chat.completions.create(
        model="gpt-4o-mini",
        messages=[
            {"role": "user", "content": "Weather in Paris?"},
            first.choices[0].message.model_dump(exclude_none=True),
            {"role": "tool", "tool_call_id": call.id, "content": "Sunny"},
        ],
        tools=[WEATHER_TOOL],
    )
    assert second.choices[0].message.content == upstream.reply_text
    assert chat_requests(upstream)[-1].body["messages"][-1] == {
        "role": "tool",
        "tool_call_id": "call_w1",
        "content": "Sunny",
    }


async def test_streamed_tool_call_is_assembled_by_the_sdk(client, upstream: FullFakeOpenAI) -> None:
    upstream.tool_call = WEATHER_CALL
    stream = await client.chat.completions.create(
        model="gpt-4o-mini",
        messages=[{"role": "user", "content": "Weather?"}],
        tools=[WEATHER_TOOL],
        tool_choice="required",
        stream=True,
    )
    args = ""
    names = []
    async for chunk in stream:
        for choice in chunk.choices:
            for tc in choice.delta.tool_calls or ():
                if tc.function.name:
                    names.append(tc.function.name)
                args += tc.function.arguments or ""
    assert names == ["get_weather"] and json.loads(args) == {"city": "Paris"}


class Forecast(BaseModel):
    city: str
    temperature_c: int


async def test_parse_with_a_pydantic_response_format(client, upstream: FullFakeOpenAI) -> None:
    upstream.reply_text = '{"city": "Paris", "temperature_c": 21}'
    completion = await client.chat.completions.parse(
        model="gpt-4o-mini",
        messages=[{"role": "user", "content": "Forecast for Paris as JSON"}],
        response_format=Forecast,
    )
    assert completion.choices[0].message.parsed == Forecast(city="Paris", temperature_c=21)
    sent = chat_requests(upstream)[-1].body["response_format"]
    assert sent["type"] == "json_schema" and sent["json_schema"]["name"] == "Forecast"
    assert sent["json_schema"]["strict"] is True


async def test_raw_response_headers_carry_request_id_and_cost(client) -> None:
    raw = await client.chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}]
    )
    completion = raw.parse()
    assert completion.choices[0].message.content
    assert raw.headers.get("x-request-id")
    assert float(raw.headers["x-ferro-cost-usd"]) > 0
    assert "sk-upstream-secret" not in str(dict(raw.headers))


@pytest.mark.parametrize("include_usage", [True, False])
async def test_stream_options_decide_the_usage_chunk(client, upstream, include_usage: bool) -> None:
    kwargs: dict[str, Any] = {"stream_options": {"include_usage": True}} if include_usage else {}
    stream = await client.chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}], stream=True, **kwargs
    )
    text = ""
    usage = []
    async for chunk in stream:
        if chunk.usage is not None:
            usage.append(chunk.usage)
        for choice in chunk.choices:
            text += choice.delta.content or ""
    assert text == upstream.reply_text
    if include_usage:
        assert len(usage) == 1 and usage[0].total_tokens == 19
    else:
        assert usage == []


async def test_n_choices_and_logprobs_pass_through(client) -> None:
    completion = await client.chat.completions.create(
        model="gpt-4o-mini",
        messages=[{"role": "user", "content": "hi"}],
        n=2,
        logprobs=True,
        top_logprobs=1,
    )
    assert [c.index for c in completion.choices] == [0, 1]
    first = completion.choices[0].logprobs.content[0]
    assert first.token == "Hello" and first.logprob == -0.25 and first.top_logprobs[0].token == "Hello"


# ---------------------------------------------------------------- embeddings, images, models


async def test_embeddings_default_base64_and_dimensions(client, upstream: FullFakeOpenAI) -> None:
    result = await client.embeddings.create(model="text-embedding-3-small", input=["a", "b"], dimensions=4)
    assert [d.embedding for d in result.data] == [VECTOR[:4], VECTOR[:4]]
    sent = upstream.requests[-1].body
    assert sent["encoding_format"] == "base64" and sent["dimensions"] == 4
    explicit = await client.embeddings.create(
        model="text-embedding-3-small", input="a", encoding_format="base64"
    )
    raw = base64.b64decode(explicit.data[0].embedding)
    assert list(struct.unpack(f"<{len(raw) // 4}f", raw)) == VECTOR


async def test_images_as_b64_json(client) -> None:
    result = await client.images.generate(model="dall-e-3", prompt="a cat", response_format="b64_json")
    assert base64.b64decode(result.data[0].b64_json) == PNG_BYTES


async def test_models_list_and_retrieve(client) -> None:
    listed = [m.id async for m in client.models.list()]
    assert "gpt-4o-mini" in listed
    one = await client.models.retrieve("gpt-4o-mini")
    assert one.id == "gpt-4o-mini"
    with pytest.raises(openai.NotFoundError):
        await client.models.retrieve("no-such-model")


# ---------------------------------------------------------------- Responses API, audio


async def test_responses_api_plain(client, upstream: FullFakeOpenAI) -> None:
    response = await client.responses.create(model="gpt-4o-mini", input="Say hello")
    assert response.output_text == upstream.reply_text
    assert response.usage.total_tokens == 13
    assert upstream.requests[-1].path == "/v1/responses"
    assert upstream.requests[-1].headers["Authorization"] == "Bearer sk-upstream-secret"


async def test_responses_api_streamed(client, upstream: FullFakeOpenAI) -> None:
    stream = await client.responses.create(model="gpt-4o-mini", input="Say hello", stream=True)
    kinds = []
    text = ""
    async for event in stream:
        kinds.append(event.type)
        if event.type == "response.output_text.delta":
            text += event.delta
    assert kinds[0] == "response.created" and kinds[-1] == "response.completed"
    assert text == upstream.reply_text


async def test_responses_api_upstream_400_is_a_bad_request(client) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        await client.responses.create(model="gpt-4o-mini", input=[])
    assert "Invalid value for 'input'" in info.value.message


async def test_audio_transcription_multipart_upload(client, upstream: FullFakeOpenAI) -> None:
    audio = b"RIFF" + bytes(range(256)) * 1200  # ~300 KB: more than one socket read
    result = await client.audio.transcriptions.create(
        model="whisper-1", file=("clip.wav", audio, "audio/wav")
    )
    assert result.text == f"heard {len(audio)} bytes"
    seen = upstream.transcripts[-1]
    assert seen["model"] == "whisper-1" and seen["filename"] == "clip.wav" and seen["bytes"] == audio
    assert seen["authorization"] == "Bearer sk-upstream-secret"


# ---------------------------------------------------------------- errors and timeouts


async def test_upstream_400_surfaces_as_bad_request_with_its_message(client, upstream) -> None:
    upstream.script = [{"status": 400, "message": "max_tokens is too large: 999999"}]
    with pytest.raises(openai.BadRequestError) as info:
        await client.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}], max_tokens=999999
        )
    assert info.value.status_code == 400
    assert "max_tokens is too large: 999999" in info.value.message
    assert "sk-upstream-secret" not in str(info.value.body)


async def test_stalled_upstream_times_out_as_504(client, upstream) -> None:
    upstream.script = [{"stall": 10}]
    with pytest.raises(openai.APIStatusError) as info:
        await client.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}]
        )
    assert info.value.status_code == 504
    assert info.value.body["code"] == "gateway_timeout"


async def test_sdk_side_timeout_cancels_the_upstream_call(client, upstream) -> None:
    upstream.script = [{"stall": 5}]
    with pytest.raises(openai.APITimeoutError):
        await client.with_options(timeout=0.3).chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}]
        )
    for _ in range(50):
        if upstream.cancelled:
            break
        await asyncio.sleep(0.05)
    assert upstream.cancelled == 1


async def test_retrieve_finds_every_listed_model(gateway_factory, upstream: FullFakeOpenAI) -> None:
    fake_anthropic = await FakeAnthropic().start()
    try:
        env = {
            "OPENAI_API_KEY": "sk-up",
            "OPENAI_BASE_URL": upstream.base_url,
            "ANTHROPIC_API_KEY": fake_anthropic.api_key,
            "ANTHROPIC_BASE_URL": fake_anthropic.host_url,
        }
        running = await gateway_factory({"aliases": {"fast": "gpt-4o-mini"}}, env=env)
        sdk = openai.AsyncOpenAI(api_key="sk-placeholder", base_url=running.proxy_url + "/v1", max_retries=0)
        try:
            listed = {m.id async for m in sdk.models.list()}
            assert {"claude-sonnet-4-20250514", "fast"} <= listed
            for model in ("claude-sonnet-4-20250514", "fast"):
                assert (await sdk.models.retrieve(model)).id == model
        finally:
            await sdk.close()
    finally:
        await fake_anthropic.stop()


@pytest.mark.xfail(
    strict=True,
    reason="providers/openai_compat.py passthrough() (line ~185) returns Responses API answers as raw "
    "bytes and never records their `usage`, so /v1/responses adds no tokens, no cost (no "
    "x-ferro-cost-usd) and nothing to budgets or token rate limits",
)
async def test_responses_api_usage_is_counted(client, running) -> None:
    raw = await client.responses.with_raw_response.create(model="gpt-4o-mini", input="Say hello")
    assert raw.parse().usage.total_tokens == 13
    assert float(raw.headers.get("x-ferro-cost-usd", "0")) > 0
    sample = running.gateway.metrics.registry.get_sample_value(
        "ferro_tokens_total", {"direction": "input", "model": "gpt-4o-mini", "provider": "openai"}
    )
    assert sample == 9
