"""AI21 (Jamba) through the OpenAI SDK against a fake AI21 Studio."""

from __future__ import annotations

import openai
import pytest

from tests.fakes.ai21_upstream import FakeAI21

PROVIDERS_COVERED = {"ai21"}
TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    },
}


@pytest.fixture
async def fake():
    fake = await FakeAI21().start()
    yield fake
    await fake.stop()


@pytest.fixture
async def client(gateway_factory, fake):
    gw = await gateway_factory(env={"AI21_API_KEY": fake.api_key, "AI21_BASE_URL": fake.base_url})
    return openai.AsyncOpenAI(api_key="unused", base_url=gw.proxy_url + "/v1", max_retries=0)


async def test_chat_translates_to_jamba(client, fake):
    resp = await client.chat.completions.create(
        model="jamba-mini",
        messages=[
            {"role": "developer", "content": "Be brief."},
            {
                "role": "user",
                "content": [{"type": "text", "text": "Hello"}, {"type": "text", "text": "there"}],
            },
        ],
        max_completion_tokens=100,
        stop="END",
        user="u1",
        response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "object"}}},
    )
    assert resp.choices[0].message.content == fake.reply_text
    assert resp.usage.total_tokens == 14
    sent = fake.requests[-1]
    assert sent["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hello\nthere"},
    ]
    assert sent["max_tokens"] == 100 and sent["stop"] == ["END"]
    assert sent["response_format"] == {"type": "json_object"}
    assert "user" not in sent and "max_completion_tokens" not in sent


async def test_streamed_chat_and_usage_only_when_asked(client, fake):
    stream = await client.chat.completions.create(
        model="jamba-mini", messages=[{"role": "user", "content": "Hi"}], stream=True
    )
    text = ""
    async for chunk in stream:
        assert chunk.usage is None
        text += "".join(c.delta.content or "" for c in chunk.choices)
    assert text == fake.reply_text
    assert "stream_options" not in fake.requests[-1]

    stream = await client.chat.completions.create(
        model="jamba-mini",
        messages=[{"role": "user", "content": "Hi"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    usage = [c.usage async for c in stream if c.usage]
    assert usage and usage[-1].total_tokens == 14


async def test_tool_call_round_trip_with_object_arguments(client, fake):
    first = await client.chat.completions.create(
        model="jamba-large", messages=[{"role": "user", "content": "Weather in Paris?"}], tools=[TOOL]
    )
    call = first.choices[0].message.tool_calls[0]
    assert first.choices[0].finish_reason == "tool_calls"
    assert call.function.arguments == '{"city":"Paris"}'  # the object AI21 sent, as a string
    final = await client.chat.completions.create(
        model="jamba-large",
        tools=[TOOL],
        messages=[
            {"role": "user", "content": "Weather in Paris?"},
            {"role": "assistant", "content": "", "tool_calls": [call.model_dump()]},
            {"role": "tool", "tool_call_id": call.id, "content": "sunny"},
        ],
    )
    assert final.choices[0].message.content == fake.reply_text
    assert fake.requests[-1]["messages"][2] == {
        "role": "tool",
        "tool_call_id": "call_ai21_1",
        "content": "sunny",
    }


async def test_streamed_tool_call(client):
    stream = await client.chat.completions.create(
        model="jamba-large", messages=[{"role": "user", "content": "Weather?"}], tools=[TOOL], stream=True
    )
    calls, finish = [], None
    async for chunk in stream:
        for c in chunk.choices:
            calls += c.delta.tool_calls or []
            finish = c.finish_reason or finish
    assert calls[0].id == "call_ai21_1" and calls[0].function.name == "get_weather"
    assert "".join(c.function.arguments or "" for c in calls) == '{"city":"Paris"}'
    assert finish == "tool_calls"


async def test_image_input_is_refused_before_reaching_ai21(client, fake):
    with pytest.raises(openai.BadRequestError) as info:
        await client.chat.completions.create(
            model="jamba-mini",
            messages=[
                {
                    "role": "user",
                    "content": [
                        {"type": "image_url", "image_url": {"url": "https://example.invalid/cat.png"}}
                    ],
                }
            ],
        )
    assert "text only" in info.value.message
    assert fake.requests == []


async def test_upstream_errors_are_mapped(client, fake):
    fake.script.append({"status": 429, "message": "Rate limit reached"})
    with pytest.raises(openai.RateLimitError) as info:
        await client.chat.completions.create(model="jamba-mini", messages=[{"role": "user", "content": "x"}])
    assert "Rate limit reached" in info.value.message
    with pytest.raises(openai.UnprocessableEntityError) as info:  # AI21's 422 passes through faithfully
        await client.chat.completions.create(
            model="jamba-mini", messages=[{"role": "user", "content": "x"}], max_tokens=10000
        )
    assert "less than or equal to 4096" in info.value.message


async def test_wrong_key_is_a_502(gateway_factory, fake):
    gw = await gateway_factory(env={"AI21_API_KEY": "wrong", "AI21_BASE_URL": fake.base_url})
    client = openai.AsyncOpenAI(api_key="unused", base_url=gw.proxy_url + "/v1", max_retries=0)
    with pytest.raises(openai.APIStatusError) as info:
        await client.chat.completions.create(model="jamba-mini", messages=[{"role": "user", "content": "x"}])
    assert info.value.status_code == 502 and "wrong" not in info.value.message


async def test_models_are_listed(client):
    ids = {m.id for m in (await client.models.list()).data if m.owned_by == "ai21"}
    assert "jamba-mini" in ids
