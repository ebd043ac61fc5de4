"""The Anthropic provider, driven with the OpenAI SDK through the gateway against a fake
Anthropic Messages API that validates requests like the real one."""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator

import aiohttp
import openai
import orjson
import pytest

from tests.fakes.anthropic_upstream import FakeAnthropic

PROVIDERS_COVERED = {"anthropic"}
MODEL = "claude-3-5-sonnet-20241022"
WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather for a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}


@pytest.fixture
async def fake_anthropic() -> AsyncIterator[FakeAnthropic]:
    fake = await FakeAnthropic().start()
    yield fake
    await fake.stop()


@pytest.fixture
async def client(gateway_factory, fake_anthropic: FakeAnthropic) -> openai.AsyncOpenAI:
    running = await gateway_factory(
        env={"ANTHROPIC_API_KEY": fake_anthropic.api_key, "ANTHROPIC_BASE_URL": fake_anthropic.host_url}
    )
    return openai.AsyncOpenAI(api_key="sk-client-unused", base_url=running.proxy_url + "/v1", max_retries=0)


async def test_plain_chat_translates_request_and_answer(client, fake_anthropic: FakeAnthropic) -> None:
    reply = await client.chat.completions.create(
        model=MODEL,
        messages=[
            {"role": "system", "content": "You are terse."},
            {"role": "user", "content": "Say hello."},
        ],
        temperature=0.2,
        stop=["END"],
        user="user-42",
    )
    assert reply.choices[0].message.content == fake_anthropic.reply_text
    assert reply.choices[0].finish_reason == "stop"
    assert reply.model == MODEL
    assert reply.usage is not None
    assert (reply.usage.prompt_tokens, reply.usage.completion_tokens, reply.usage.total_tokens) == (21, 9, 30)

    sent = fake_anthropic.last
    assert sent.path == "/v1/messages"  # bare-host base URL got Anthropic's /v1
    assert sent.headers["x-api-key"] == fake_anthropic.api_key
    assert sent.headers["anthropic-version"] == "2023-06-01"
    assert "Authorization" not in sent.headers
    assert sent.body == {
        "model": MODEL,
        "max_tokens": 4096,  # Anthropic requires it: the gateway's default
        "messages": [{"role": "user", "content": "Say hello."}],
        "system": "You are terse.",
        "temperature": 0.2,
        "stop_sequences": ["END"],
        "metadata": {"user_id": "user-42"},
    }


async def test_max_completion_tokens_is_forwarded(client, fake_anthropic: FakeAnthropic) -> None:
    await client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "hi"}], max_completion_tokens=77
    )
    assert fake_anthropic.last.body["max_tokens"] == 77


async def test_streamed_chat_arrives_as_openai_chunks_with_usage(
    client, fake_anthropic: FakeAnthropic
) -> None:
    stream = await client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Stream please."}],
        stream=True,
        stream_options={"include_usage": True},
    )
    text, finish, usage, chunks = "", None, None, 0
    async for chunk in stream:
        chunks += 1
        assert chunk.object == "chat.completion.chunk"
        if chunk.choices:
            text += chunk.choices[0].delta.content or ""
            finish = chunk.choices[0].finish_reason or finish
        if chunk.usage is not None:
            usage = chunk.usage
    assert text == fake_anthropic.reply_text
    assert chunks > 3  # word by word, not one buffered blob
    assert finish == "stop"
    assert usage is not None and (usage.prompt_tokens, usage.completion_tokens) == (21, 9)
    assert fake_anthropic.last.body["stream"] is True


async def test_stream_without_include_usage_has_no_usage_chunk(client, fake_anthropic: FakeAnthropic) -> None:
    stream = await client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "hi"}], stream=True
    )
    chunks = [c async for c in stream]
    assert all(c.usage is None for c in chunks)
    assert all(c.choices for c in chunks)


async def test_tool_call_round_trip(client, fake_anthropic: FakeAnthropic) -> None:
    fake_anthropic.tool_use = {"name": "get_weather", "input": {"city": "Paris"}}
    messages: list[dict] = [{"role": "user", "content": "Weather in Paris?"}]
    first = await client.chat.completions.create(
        model=MODEL,
        messages=messages,
        tools=[WEATHER_TOOL],
        tool_choice="required",
        parallel_tool_calls=False,
    )
    choice = first.choices[0]
    assert choice.finish_reason == "tool_calls"
    call = choice.message.tool_calls[0]
    assert call.function.name == "get_weather"
    assert orjson.loads(call.function.arguments) == {"city": "Paris"}
    sent = fake_anthropic.last.body
    assert sent["tools"] == [
        {
            "name": "get_weather",
            "description": "Current weather for a city",
            "input_schema": WEATHER_TOOL["function"]["parameters"],
        }
    ]
    assert sent["tool_choice"] == {"type": "any", "disable_parallel_tool_use": True}

    messages.append(choice.message.model_dump(exclude_none=True))
    messages.append({"role": "tool", "tool_call_id": call.id, "content": "18C and sunny"})
    final = await client.chat.completions.create(model=MODEL, messages=messages, tools=[WEATHER_TOOL])
    assert final.choices[0].message.content == fake_anthropic.reply_text
    assert final.choices[0].finish_reason == "stop"
    sent = fake_anthropic.last.body
    assert sent["messages"][1] == {
        "role": "assistant",
        "content": [{"type": "tool_use", "id": call.id, "name": "get_weather", "input": {"city": "Paris"}}],
    }
    assert sent["messages"][2] == {
        "role": "user",
        "content": [{"type": "tool_result", "tool_use_id": call.id, "content": "18C and sunny"}],
    }


async def test_streamed_tool_call_fragments(client, fake_anthropic: FakeAnthropic) -> None:
    fake_anthropic.tool_use = {"name": "get_weather", "input": {"city": "Oslo"}}
    stream = await client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Weather in Oslo?"}],
        tools=[WEATHER_TOOL],
        tool_choice={"type": "function", "function": {"name": "get_weather"}},
        stream=True,
    )
    starts, fragments, finish = [], [], None
    async for chunk in stream:
        delta = chunk.choices[0].delta
        for tc in delta.tool_calls or ():
            if tc.id:
                starts.append((tc.index, tc.id, tc.type, tc.function.name))
            if tc.function and tc.function.arguments:
                fragments.append(tc.function.arguments)
        finish = chunk.choices[0].finish_reason or finish
    assert starts == [(0, "toolu_01FakeCall", "function", "get_weather")]
    assert len(fragments) == 2  # argument fragments arrive as the upstream sends them
    assert orjson.loads("".join(fragments)) == {"city": "Oslo"}
    assert finish == "tool_calls"
    assert fake_anthropic.last.body["tool_choice"] == {"type": "tool", "name": "get_weather"}


async def test_image_inputs_url_and_base64(client, fake_anthropic: FakeAnthropic) -> None:
    png = base64.b64encode(b"\x89PNG\r\n\x1a\nfake").decode()
    await client.chat.completions.create(
        model=MODEL,
        messages=[
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "Compare these."},
                    {"type": "image_url", "image_url": {"url": "https://example.com/cat.jpg"}},
                    {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{png}"}},
                ],
            }
        ],
    )
    assert fake_anthropic.last.body["messages"][0]["content"] == [
        {"type": "text", "text": "Compare these."},
        {"type": "image", "source": {"type": "url", "url": "https://example.com/cat.jpg"}},
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": png}},
    ]


async def test_json_schema_response_format_uses_a_forced_tool(client, fake_anthropic: FakeAnthropic) -> None:
    schema = {"type": "object", "properties": {"answer": {"type": "string"}}, "required": ["answer"]}
    reply = await client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Answer in JSON."}],
        response_format={"type": "json_schema", "json_schema": {"name": "answer", "schema": schema}},
    )
    assert orjson.loads(reply.choices[0].message.content) == {"answer": fake_anthropic.reply_text}
    assert reply.choices[0].finish_reason == "stop"
    assert reply.choices[0].message.tool_calls is None
    sent = fake_anthropic.last.body
    assert sent["tool_choice"] == {"type": "tool", "name": "json_response"}
    assert sent["tools"][0]["input_schema"] == schema


async def test_upstream_bad_request_keeps_status_and_message(client, fake_anthropic: FakeAnthropic) -> None:
    fake_anthropic.script.append({"status": 400, "message": "messages: prompt is too long"})
    with pytest.raises(openai.BadRequestError) as info:
        await client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}])
    assert info.value.status_code == 400
    assert "prompt is too long" in info.value.message
    assert info.value.body["code"] == "invalid_request_error"


async def test_upstream_rate_limit_maps_to_429_with_retry_after(
    client, fake_anthropic: FakeAnthropic
) -> None:
    fake_anthropic.script.append({"status": 429, "retry_after": 7, "message": "Number of requests exceeded"})
    with pytest.raises(openai.RateLimitError) as info:
        await client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}])
    assert info.value.response.headers["retry-after"] == "7"
    assert "Number of requests exceeded" in info.value.message


async def test_overloaded_and_auth_failures_are_bad_gateway(gateway_factory, fake_anthropic) -> None:
    running = await gateway_factory(
        env={"ANTHROPIC_API_KEY": "wrong-key", "ANTHROPIC_BASE_URL": fake_anthropic.host_url}
    )
    body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}]}
    async with aiohttp.ClientSession() as http:
        async with http.post(running.proxy_url + "/v1/chat/completions", json=body) as resp:
            assert resp.status == 502
            text = await resp.text()
        assert orjson.loads(text)["error"]["code"] == "upstream_auth_error"
        assert "wrong-key" not in text
        fake_anthropic.api_key = "wrong-key"
        fake_anthropic.script.append({"status": 529, "message": "Overloaded"})
        async with http.post(running.proxy_url + "/v1/chat/completions", json=body) as resp:
            assert resp.status == 502
            assert "Overloaded" in (await resp.json())["error"]["message"]


async def test_error_event_mid_stream_ends_the_stream_with_an_error(client, fake_anthropic) -> None:
    fake_anthropic.script.append({"error_event_after": 4})
    stream = await client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "hi"}], stream=True
    )
    with pytest.raises(openai.APIError) as info:
        async for _ in stream:
            pass
    assert "Overloaded" in str(info.value)


async def test_stream_cut_short_is_an_error_not_a_complete_answer(client, fake_anthropic) -> None:
    fake_anthropic.script.append({"cut_after": 5})
    stream = await client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "hi"}], stream=True
    )
    with pytest.raises(openai.APIError) as info:
        async for _ in stream:
            pass
    assert "ended the stream early" in str(info.value) or "stream broke" in str(info.value)


async def test_models_lists_claude_models(client) -> None:
    models = await client.models.list()
    ids = [m.id for m in models.data if m.owned_by == "anthropic"]
    assert ids and all(i.startswith("claude-") for i in ids)


async def test_base_url_with_a_path_is_used_verbatim(gateway_factory, fake_anthropic) -> None:
    running = await gateway_factory(
        env={
            "ANTHROPIC_API_KEY": fake_anthropic.api_key,
            "ANTHROPIC_BASE_URL": fake_anthropic.host_url + "/v1/",
        }
    )
    client = openai.AsyncOpenAI(api_key="x", base_url=running.proxy_url + "/v1", max_retries=0)
    await client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}])
    assert fake_anthropic.last.path == "/v1/messages"


async def test_yaml_providers_section_enables_anthropic(gateway_factory, fake_anthropic) -> None:
    config = {
        "providers": {"anthropic": {"api_key": fake_anthropic.api_key, "base_url": fake_anthropic.host_url}}
    }
    running = await gateway_factory(config)
    client = openai.AsyncOpenAI(api_key="x", base_url=running.proxy_url + "/v1", max_retries=0)
    reply = await client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}])
    assert reply.choices[0].message.content == fake_anthropic.reply_text
