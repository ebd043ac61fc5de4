"""The Cohere v2 adapter through the OpenAI SDK, against a fake Cohere API on loopback."""

from __future__ import annotations

import aiohttp
import openai
import pytest

from tests.fakes.cohere_upstream import FakeCohere
from tests.fakes.gemini_upstream import TINY_PNG_B64

PROVIDERS_COVERED = {"cohere"}

TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather for a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
        "strict": True,
    },
}


@pytest.fixture
async def fake() -> FakeCohere:
    fake = await FakeCohere().start()
    yield fake
    await fake.stop()


@pytest.fixture
async def gw(gateway_factory, fake):
    return await gateway_factory(env={"COHERE_API_KEY": fake.api_key, "COHERE_BASE_URL": fake.base_url})


@pytest.fixture
def client(gw) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(api_key="sk-placeholder", base_url=gw.proxy_url + "/v1", max_retries=0)


async def test_chat_translates_request_and_response(client, fake):
    resp = await client.chat.completions.create(
        model="command-a-03-2025",
        messages=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}],
        max_tokens=40,
        top_p=0.8,
        stop="END",
        temperature=0.1,
        response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "object"}}},
    )
    assert resp.choices[0].message.content == fake.reply_text
    assert resp.choices[0].finish_reason == "stop"
    assert resp.id == "chatcmpl-c0ffee"
    assert (resp.usage.prompt_tokens, resp.usage.completion_tokens) == (9, 6)
    sent = fake.requests[-1]
    assert sent.path == "/v2/chat" and sent.headers["Authorization"] == f"Bearer {fake.api_key}"
    assert sent.body == {
        "model": "command-a-03-2025",
        "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}],
        "max_tokens": 40,
        "temperature": 0.1,
        "p": 0.8,
        "stop_sequences": ["END"],
        "response_format": {"type": "json_object", "json_schema": {"type": "object"}},
    }


async def test_finish_reason_max_tokens_is_length(client, fake):
    fake.script = [{"finish": "MAX_TOKENS"}]
    resp = await client.chat.completions.create(
        model="command-r-08-2024", messages=[{"role": "user", "content": "Hi"}]
    )
    assert resp.choices[0].finish_reason == "length"


async def test_streamed_chat(client, fake):
    stream = await client.chat.completions.create(
        model="command-a-03-2025",
        messages=[{"role": "user", "content": "Hi"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = [c async for c in stream]
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == fake.reply_text
    assert len([c for c in chunks if c.choices and c.choices[0].delta.content]) == len(
        fake.reply_text.split(" ")
    )
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 6
    assert fake.requests[-1].body["stream"] is True
    assert fake.requests[-1].headers["Accept"] == "text/event-stream"


async def test_tool_call_round_trip(client, fake):
    fake.tool_call = {"name": "get_weather", "arguments": '{"city":"Lima"}'}
    messages = [{"role": "user", "content": "Weather in Lima?"}]
    first = await client.chat.completions.create(
        model="command-a-03-2025", messages=messages, tools=[TOOL], tool_choice="required"
    )
    call = first.choices[0].message.tool_calls[0]
    assert first.choices[0].finish_reason == "tool_calls"
    assert (call.id, call.function.name, call.function.arguments) == (
        "get_weather_abc123",
        "get_weather",
        '{"city":"Lima"}',
    )
    sent = fake.requests[-1].body
    assert sent["tool_choice"] == "REQUIRED"
    assert sent["tools"] == [
        {"type": "function", "function": {k: v for k, v in TOOL["function"].items() if k != "strict"}}
    ]

    messages += [
        first.choices[0].message.model_dump(exclude_none=True),
        {"role": "tool", "tool_call_id": call.id, "content": '{"temp_c": 21}'},
    ]
    final = await client.chat.completions.create(model="command-a-03-2025", messages=messages, tools=[TOOL])
    assert final.choices[0].message.content == fake.reply_text
    sent = fake.requests[-1].body["messages"]
    assert sent[1] == {
        "role": "assistant",
        "tool_calls": [
            {
                "id": call.id,
                "type": "function",
                "function": {"name": "get_weather", "arguments": '{"city":"Lima"}'},
            }
        ],
    }
    assert sent[2] == {"role": "tool", "tool_call_id": call.id, "content": '{"temp_c": 21}'}


async def test_streamed_tool_call(client, fake):
    fake.tool_call = {"name": "get_weather", "arguments": '{"city":"Kyiv"}'}
    stream = await client.chat.completions.create(
        model="command-a-03-2025", messages=[{"role": "user", "content": "Kyiv?"}], tools=[TOOL], stream=True
    )
    head, args, finish = None, "", None
    async for chunk in stream:
        for tc in chunk.choices[0].delta.tool_calls or []:
            head = head or tc
            assert tc.index == 0
            args += tc.function.arguments or ""
        finish = chunk.choices[0].finish_reason or finish
    assert head.id == "get_weather_abc123" and head.function.name == "get_weather" and head.type == "function"
    assert args == '{"city":"Kyiv"}' and finish == "tool_calls"


async def test_named_tool_choice_offers_only_that_tool(client, fake):
    other = {
        "type": "function",
        "function": {"name": "get_time", "parameters": {"type": "object", "properties": {}}},
    }
    fake.tool_call = {"name": "get_weather", "arguments": '{"city":"Rome"}'}
    await client.chat.completions.create(
        model="command-a-03-2025",
        messages=[{"role": "user", "content": "Rome?"}],
        tools=[other, TOOL],
        tool_choice={"type": "function", "function": {"name": "get_weather"}},
    )
    sent = fake.requests[-1].body
    assert [t["function"]["name"] for t in sent["tools"]] == ["get_weather"] and sent[
        "tool_choice"
    ] == "REQUIRED"


async def test_image_inputs(client, fake):
    data_url = "data:image/png;base64," + TINY_PNG_B64
    await client.chat.completions.create(
        model="command-a-vision-07-2025",
        messages=[
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "Describe"},
                    {"type": "image_url", "image_url": {"url": "https://example.com/a.jpg"}},
                    {"type": "image_url", "image_url": {"url": data_url, "detail": "high"}},
                ],
            }
        ],
    )
    assert fake.requests[-1].body["messages"][0]["content"] == [
        {"type": "text", "text": "Describe"},
        {"type": "image_url", "image_url": {"url": "https://example.com/a.jpg"}},
        {"type": "image_url", "image_url": {"url": data_url}},
    ]


async def test_embeddings(client, fake):
    resp = await client.embeddings.create(
        model="embed-v4.0", input=["a", "b"], extra_body={"input_type": "search_query"}
    )
    assert resp.data[1].embedding == pytest.approx([0.2, 0.4, 0.6])
    assert resp.usage.prompt_tokens == 4
    assert fake.requests[-1].body == {
        "model": "embed-v4.0",
        "texts": ["a", "b"],
        "input_type": "search_query",
        "embedding_types": ["float"],
    }


async def test_upstream_errors(client, fake):
    fake.script = [
        {"status": 429, "retry_after": 3, "message": "You are using a Trial key, which is limited"}
    ]
    with pytest.raises(openai.RateLimitError) as info:
        await client.chat.completions.create(
            model="command-a-03-2025", messages=[{"role": "user", "content": "Hi"}]
        )
    assert "Trial key" in info.value.message and info.value.response.headers["Retry-After"] == "3"
    fake.script = [{"status": 400, "message": "invalid request: model 'command-x' not found"}]
    with pytest.raises(openai.BadRequestError) as info:
        await client.chat.completions.create(
            model="command-a-03-2025", messages=[{"role": "user", "content": "Hi"}]
        )
    assert "model 'command-x' not found" in info.value.message


async def test_stream_without_message_end_is_an_error(client, fake):
    fake.script = [{"cut_after": 3}]
    stream = await client.chat.completions.create(
        model="command-a-03-2025", messages=[{"role": "user", "content": "Hi"}], stream=True
    )
    with pytest.raises(openai.APIError) as info:
        async for _ in stream:
            pass
    assert "without message-end" in info.value.message


async def test_bad_key_is_502_without_the_key(gateway_factory, fake):
    gw = await gateway_factory(env={"COHERE_API_KEY": "bad-cohere-secret", "COHERE_BASE_URL": fake.base_url})
    client = openai.AsyncOpenAI(api_key="sk-placeholder", base_url=gw.proxy_url + "/v1", max_retries=0)
    with pytest.raises(openai.APIStatusError) as info:
        await client.chat.completions.create(
            model="command-a-03-2025", messages=[{"role": "user", "content": "Hi"}]
        )
    assert info.value.status_code == 502 and "bad-cohere-secret" not in info.value.response.text


async def test_models_are_listed(gw):
    async with aiohttp.ClientSession() as s, s.get(gw.proxy_url + "/v1/models") as r:
        ids = {m["id"] for m in (await r.json())["data"] if m["owned_by"] == "cohere"}
    assert {"command-a-03-2025", "embed-v4.0"} <= ids
