"""The Anthropic Messages ingress routed to an OpenAI-compatible upstream: the official
`anthropic` SDK talks to the gateway, the gateway translates both ways."""

from __future__ import annotations

import anthropic
import orjson
import pytest

from tests.fakes.openai_upstream import FakeOpenAI

MODEL = "gpt-4o-mini"
WEATHER_TOOL = {
    "name": "get_weather",
    "description": "Current weather for a city",
    "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}
TOOL_CALL = {
    "id": "call_abc123",
    "type": "function",
    "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
}


@pytest.fixture
def claude(gateway) -> anthropic.AsyncAnthropic:
    return anthropic.AsyncAnthropic(api_key="sk-placeholder", base_url=gateway.proxy_url, max_retries=0)


async def test_plain_message(claude, fake_openai: FakeOpenAI) -> None:
    message = await claude.messages.create(
        model=MODEL,
        max_tokens=256,
        system="You are terse.",
        messages=[{"role": "user", "content": "Say hello."}],
        stop_sequences=["END"],
        metadata={"user_id": "user-7"},
        extra_body={"temperature": 0.3},  # this SDK release has no typed sampling parameters
    )
    assert message.type == "message" and message.role == "assistant"
    assert message.id.startswith("msg_")
    assert [b.type for b in message.content] == ["text"]
    assert message.content[0].text == fake_openai.reply_text
    assert message.stop_reason == "end_turn"
    assert (message.usage.input_tokens, message.usage.output_tokens) == (12, 7)

    sent = fake_openai.requests[-1].body
    assert sent["messages"] == [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "Say hello."},
    ]
    assert (sent["max_tokens"], sent["stop"], sent["temperature"], sent["user"]) == (
        256,
        ["END"],
        0.3,
        "user-7",
    )
    assert "metadata" not in sent and "stop_sequences" not in sent


async def test_streamed_text_with_the_stream_helper(claude, fake_openai: FakeOpenAI) -> None:
    pieces = []
    async with claude.messages.stream(
        model=MODEL, max_tokens=100, messages=[{"role": "user", "content": "Stream it."}]
    ) as stream:
        async for text in stream.text_stream:
            pieces.append(text)
        final = await stream.get_final_message()
    assert "".join(pieces) == fake_openai.reply_text
    assert len(pieces) > 1  # chunk by chunk, not one buffered blob
    assert final.content[0].text == fake_openai.reply_text
    assert final.stop_reason == "end_turn"
    assert final.usage.output_tokens == 7 and final.usage.input_tokens == 12


async def test_raw_stream_follows_anthropics_event_sequence(claude, fake_openai: FakeOpenAI) -> None:
    stream = await claude.messages.create(
        model=MODEL, max_tokens=100, messages=[{"role": "user", "content": "hi"}], stream=True
    )
    events = [event async for event in stream]
    kinds = [e.type for e in events]
    assert kinds[:2] == ["message_start", "content_block_start"]
    assert kinds[-3:] == ["content_block_stop", "message_delta", "message_stop"]
    assert set(kinds[2:-3]) == {"content_block_delta"}
    assert all(e.delta.type == "text_delta" for e in events if e.type == "content_block_delta")
    delta = events[-2]
    assert delta.delta.stop_reason == "end_turn"
    assert delta.usage.output_tokens == 7
    assert fake_openai.requests[-1].body["stream_options"] == {"include_usage": True}


async def test_ping_is_sent_after_the_first_block_starts(gateway, fake_openai: FakeOpenAI) -> None:
    import aiohttp

    body = {"model": MODEL, "max_tokens": 50, "stream": True, "messages": [{"role": "user", "content": "hi"}]}
    async with aiohttp.ClientSession() as http:
        async with http.post(
            gateway.proxy_url + "/v1/messages", json=body, headers={"x-api-key": "k"}
        ) as resp:
            assert resp.status == 200
            assert resp.headers["Content-Type"].startswith("text/event-stream")
            text = await resp.text()
    names = [line[7:] for line in text.splitlines() if line.startswith("event: ")]
    assert names[:3] == ["message_start", "content_block_start", "ping"]
    assert names[-1] == "message_stop"


async def test_tool_use_round_trip(claude, fake_openai: FakeOpenAI) -> None:
    fake_openai.tool_call = TOOL_CALL
    messages: list[dict] = [{"role": "user", "content": "Weather in Paris?"}]
    first = await claude.messages.create(
        model=MODEL,
        max_tokens=200,
        messages=messages,
        tools=[WEATHER_TOOL],
        tool_choice={"type": "any", "disable_parallel_tool_use": True},
    )
    assert first.stop_reason == "tool_use"
    tool_use = first.content[-1]
    assert (tool_use.type, tool_use.id, tool_use.name, tool_use.input) == (
        "tool_use",
        "call_abc123",
        "get_weather",
        {"city": "Paris"},
    )
    sent = fake_openai.requests[-1].body
    assert sent["tools"] == [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "parameters": WEATHER_TOOL["input_schema"],
                "description": "Current weather for a city",
            },
        }
    ]
    assert sent["tool_choice"] == "required" and sent["parallel_tool_calls"] is False

    messages.append(
        {"role": "assistant", "content": [b.model_dump(exclude_none=True) for b in first.content]}
    )
    messages.append(
        {
            "role": "user",
            "content": [
                {"type": "tool_result", "tool_use_id": tool_use.id, "content": "18C and sunny"},
                {"type": "text", "text": "Summarise it."},
            ],
        }
    )
    final = await claude.messages.create(model=MODEL, max_tokens=200, messages=messages, tools=[WEATHER_TOOL])
    assert final.stop_reason == "end_turn"
    assert final.content[0].text == fake_openai.reply_text
    sent = fake_openai.requests[-1].body["messages"]
    assert sent[1]["role"] == "assistant"
    assert sent[1]["tool_calls"][0]["id"] == "call_abc123"
    assert orjson.loads(sent[1]["tool_calls"][0]["function"]["arguments"]) == {"city": "Paris"}
    assert sent[2] == {"role": "tool", "tool_call_id": "call_abc123", "content": "18C and sunny"}
    assert sent[3] == {"role": "user", "content": "Summarise it."}


async def test_streamed_tool_use_builds_input_json(claude, fake_openai: FakeOpenAI) -> None:
    fake_openai.tool_call = TOOL_CALL
    async with claude.messages.stream(
        model=MODEL, max_tokens=100, messages=[{"role": "user", "content": "Weather?"}], tools=[WEATHER_TOOL]
    ) as stream:
        events = [event async for event in stream]
        final = await stream.get_final_message()
    json_deltas = [
        e for e in events if e.type == "content_block_delta" and e.delta.type == "input_json_delta"
    ]
    assert len(json_deltas) == 2
    assert final.stop_reason == "tool_use"
    block = final.content[-1]
    assert (block.type, block.name, block.input) == ("tool_use", "get_weather", {"city": "Paris"})


async def test_image_blocks_become_openai_image_parts(claude, fake_openai: FakeOpenAI) -> None:
    await claude.messages.create(
        model=MODEL,
        max_tokens=50,
        messages=[
            {
                "role": "user",
                "content": [
                    {
                        "type": "image",
                        "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="},
                    },
                    {"type": "image", "source": {"type": "url", "url": "https://example.com/a.jpg"}},
                    {"type": "text", "text": "What is this?"},
                ],
            }
        ],
    )
    assert fake_openai.requests[-1].body["messages"][0]["content"] == [
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}},
        {"type": "image_url", "image_url": {"url": "https://example.com/a.jpg"}},
        {"type": "text", "text": "What is this?"},
    ]


async def test_missing_max_tokens_is_an_anthropic_shaped_400(claude, fake_openai: FakeOpenAI) -> None:
    with pytest.raises(anthropic.BadRequestError) as info:
        await claude.messages.create(model=MODEL, max_tokens=0, messages=[{"role": "user", "content": "hi"}])
    assert info.value.status_code == 400
    assert info.value.body["type"] == "error"
    assert info.value.body["error"]["type"] == "invalid_request_error"
    assert "max_tokens" in info.value.body["error"]["message"]
    assert fake_openai.requests == []


async def test_system_role_inside_messages_is_refused(claude, fake_openai: FakeOpenAI) -> None:
    with pytest.raises(anthropic.BadRequestError) as info:
        await claude.messages.create(
            model=MODEL,
            max_tokens=10,
            messages=[{"role": "system", "content": "no"}, {"role": "user", "content": "x"}],
        )
    assert "system" in info.value.body["error"]["message"]
    assert fake_openai.requests == []


async def test_upstream_not_found_is_not_found_error(claude, fake_openai: FakeOpenAI) -> None:
    fake_openai.script.append({"status": 404, "message": "The model `gpt-x` does not exist"})
    with pytest.raises(anthropic.NotFoundError) as info:
        await claude.messages.create(model=MODEL, max_tokens=10, messages=[{"role": "user", "content": "hi"}])
    assert info.value.body["error"]["type"] == "not_found_error"
    assert "does not exist" in info.value.body["error"]["message"]


async def test_upstream_rate_limit_is_an_anthropic_rate_limit_error(claude, fake_openai: FakeOpenAI) -> None:
    fake_openai.script.append({"status": 429, "retry_after": 4, "message": "slow down"})
    with pytest.raises(anthropic.RateLimitError) as info:
        await claude.messages.create(model=MODEL, max_tokens=10, messages=[{"role": "user", "content": "hi"}])
    assert info.value.body["error"]["type"] == "rate_limit_error"
    assert "slow down" in info.value.body["error"]["message"]
    assert info.value.response.headers["retry-after"] == "4"


async def test_upstream_failure_mid_stream_is_an_anthropic_error_event(
    claude, fake_openai: FakeOpenAI
) -> None:
    fake_openai.script.append({"cut_after": 3})
    stream = await claude.messages.create(
        model=MODEL, max_tokens=10, messages=[{"role": "user", "content": "hi"}], stream=True
    )
    seen = []
    with pytest.raises(anthropic.APIStatusError) as info:
        async for event in stream:
            seen.append(event.type)
    assert seen[0] == "message_start"
    assert "message_stop" not in seen
    assert info.value.body["type"] == "error"
    assert info.value.body["error"]["type"] == "api_error"


async def test_count_tokens_is_estimated_for_other_providers(claude, fake_openai: FakeOpenAI) -> None:
    short = await claude.messages.count_tokens(model=MODEL, messages=[{"role": "user", "content": "hi"}])
    long = await claude.messages.count_tokens(
        model=MODEL,
        system="x" * 400,
        messages=[{"role": "user", "content": "hello " * 200}],
        tools=[WEATHER_TOOL],
    )
    assert 0 < short.input_tokens < 10
    assert long.input_tokens > 400  # 400 + 1,200 characters of text alone is ~400 tokens
    assert fake_openai.requests == []
