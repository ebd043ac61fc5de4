"""Bedrock through the OpenAI SDK: Converse, ConverseStream (binary event stream), tools,
images in, Titan/Cohere embeddings, Titan images, errors; every request SigV4-checked by
the fake."""

from __future__ import annotations

import base64
import struct

import aiohttp
import openai
import pytest

from tests.fakes.bedrock_upstream import FakeBedrock

PROVIDERS_COVERED = {"bedrock"}
MODEL = "anthropic.claude-3-5-sonnet-20241022-v2:0"
WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather for a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}


@pytest.fixture
async def fake():
    fake = await FakeBedrock().start()
    yield fake
    await fake.stop()


def env_for(fake: FakeBedrock, **extra: str) -> dict[str, str]:
    return {
        "AWS_REGION": fake.region,
        "AWS_ACCESS_KEY_ID": fake.access_key_id,
        "AWS_SECRET_ACCESS_KEY": fake.secret_access_key,
        "BEDROCK_BASE_URL": fake.base_url,
        **extra,
    }


@pytest.fixture
async def client(gateway_factory, fake):
    gw = await gateway_factory(env=env_for(fake))
    return openai.AsyncOpenAI(api_key="unused", base_url=gw.proxy_url + "/v1", max_retries=0)


async def test_chat_is_signed_translated_and_answered(client, fake):
    resp = await client.chat.completions.create(
        model=MODEL,
        messages=[
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Hi"},
            {"role": "user", "content": [{"type": "text", "text": "there"}]},
        ],
        max_tokens=50,
        temperature=0.3,
        top_p=0.9,
        stop="END",
        user="user-42",
    )
    assert resp.choices[0].message.content == fake.reply_text
    assert resp.choices[0].finish_reason == "stop"
    assert resp.usage.prompt_tokens == 15 and resp.usage.completion_tokens == 6
    assert resp.usage.prompt_tokens_details.cached_tokens == 4
    sent = fake.requests[-1]
    assert sent.path == "/model/anthropic.claude-3-5-sonnet-20241022-v2%3A0/converse"
    assert sent.body["system"] == [{"text": "Be brief."}]
    # two user messages in a row become one user turn (Converse wants alternation)
    assert sent.body["messages"] == [{"role": "user", "content": [{"text": "Hi"}, {"text": "there"}]}]
    assert sent.body["inferenceConfig"] == {
        "maxTokens": 50,
        "temperature": 0.3,
        "topP": 0.9,
        "stopSequences": ["END"],
    }
    assert sent.body["requestMetadata"] == {"user": "user-42"}
    assert "x-amz-security-token" not in sent.headers["Authorization"]


async def test_streamed_chat_arrives_in_pieces_with_usage_when_asked(client, fake):
    stream = await client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Hi"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    pieces, finish, usage = [], None, None
    async for chunk in stream:
        if chunk.usage:
            usage = chunk.usage
        for choice in chunk.choices:
            if choice.delta.content:
                pieces.append(choice.delta.content)
            finish = choice.finish_reason or finish
    assert "".join(pieces) == fake.reply_text and len(pieces) > 2
    assert finish == "stop"
    assert usage is not None and usage.total_tokens == 21
    assert fake.requests[-1].path.endswith("/converse-stream")


async def test_stream_without_usage_request_has_no_usage_chunk(client):
    stream = await client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Hi"}], stream=True
    )
    async for chunk in stream:
        assert chunk.choices, "no usage-only chunk unless the client asked"


async def test_tool_call_round_trip(client, fake):
    first = await client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Weather in Paris?"}],
        tools=[WEATHER_TOOL],
        tool_choice="required",
    )
    call = first.choices[0].message.tool_calls[0]
    assert first.choices[0].finish_reason == "tool_calls"
    assert call.id == "tooluse_fake1" and call.function.name == "get_weather"
    assert call.function.arguments == '{"city":"Paris"}'
    native_tools = fake.requests[-1].body["toolConfig"]
    assert native_tools["tools"][0]["toolSpec"]["inputSchema"]["json"]["required"] == ["city"]
    assert native_tools["toolChoice"] == {"any": {}}

    final = await client.chat.completions.create(
        model=MODEL,
        tools=[WEATHER_TOOL],
        messages=[
            {"role": "user", "content": "Weather in Paris?"},
            {"role": "assistant", "content": None, "tool_calls": [call.model_dump()]},
            {"role": "tool", "tool_call_id": call.id, "content": "18C and sunny"},
        ],
    )
    assert final.choices[0].message.content == fake.reply_text
    turns = fake.requests[-1].body["messages"]
    assert turns[1] == {
        "role": "assistant",
        "content": [
            {"toolUse": {"toolUseId": "tooluse_fake1", "name": "get_weather", "input": {"city": "Paris"}}}
        ],
    }
    assert turns[2] == {
        "role": "user",
        "content": [{"toolResult": {"toolUseId": "tooluse_fake1", "content": [{"text": "18C and sunny"}]}}],
    }


async def test_streamed_tool_call_fragments(client):
    stream = await client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Weather?"}], tools=[WEATHER_TOOL], stream=True
    )
    deltas, finish = [], None
    async for chunk in stream:
        for choice in chunk.choices:
            deltas += choice.delta.tool_calls or []
            finish = choice.finish_reason or finish
    assert deltas[0].id == "tooluse_fake1" and deltas[0].function.name == "get_weather"
    assert all(d.index == 0 for d in deltas)
    assert "".join(d.function.arguments or "" for d in deltas) == '{"city":"Paris"}'
    assert len(deltas) >= 3 and finish == "tool_calls"


async def test_json_schema_response_format_comes_back_as_content(client, fake):
    resp = await client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Answer?"}],
        response_format={
            "type": "json_schema",
            "json_schema": {
                "name": "answer",
                "schema": {"type": "object", "properties": {"answer": {"type": "string"}}},
            },
        },
    )
    assert resp.choices[0].message.content == '{"answer":"forty-two"}'
    assert resp.choices[0].finish_reason == "stop" and not resp.choices[0].message.tool_calls
    assert fake.requests[-1].body["toolConfig"]["toolChoice"] == {"tool": {"name": "answer"}}


async def test_image_inputs_url_and_base64(gateway_factory, fake):
    # The fake serves the image over http on loopback: only the unsafe test settings reach it.
    gw = await gateway_factory(
        config={"fetch": {"allow_http": True, "allow_private": True}}, env=env_for(fake)
    )
    client = openai.AsyncOpenAI(api_key="unused", base_url=gw.proxy_url + "/v1", max_retries=0)
    data_url = "data:image/jpeg;base64," + base64.b64encode(b"\xff\xd8\xff\xe0jpegbytes").decode()
    await client.chat.completions.create(
        model=MODEL,
        messages=[
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "What is in these?"},
                    {"type": "image_url", "image_url": {"url": fake.base_url + "/assets/cat.png"}},
                    {"type": "image_url", "image_url": {"url": data_url}},
                ],
            }
        ],
    )
    blocks = fake.requests[-1].body["messages"][0]["content"]
    assert blocks[1] == {
        "image": {"format": "png", "source": {"bytes": base64.b64encode(fake.image_png).decode()}}
    }
    assert blocks[2]["image"]["format"] == "jpeg"
    assert base64.b64decode(blocks[2]["image"]["source"]["bytes"]) == b"\xff\xd8\xff\xe0jpegbytes"


async def test_unsupported_image_type_is_a_400(client):
    with pytest.raises(openai.BadRequestError) as info:
        await client.chat.completions.create(
            model=MODEL,
            messages=[
                {
                    "role": "user",
                    "content": [{"type": "image_url", "image_url": {"url": "data:image/tiff;base64,AAAA"}}],
                }
            ],
        )
    assert "png, jpeg, gif or webp" in info.value.message


async def test_titan_embeddings_floats_and_base64(client, fake):
    resp = await client.embeddings.create(
        model="amazon.titan-embed-text-v2:0", input=["hello", "hi"], dimensions=256
    )
    assert [d.index for d in resp.data] == [0, 1]
    assert len(resp.data[0].embedding) == 256 and resp.data[0].embedding[:2] == [0.5, 0.5]
    assert resp.data[1].embedding[0] == pytest.approx(0.2)
    assert resp.usage.prompt_tokens == 7
    assert {r.body["inputText"] for r in fake.requests[-2:]} == {"hello", "hi"}
    assert fake.requests[-1].body["dimensions"] == 256
    # the raw wire answer honours encoding_format=base64 (float32 little-endian)
    gw_url = str(client.base_url).rstrip("/")
    async with aiohttp.ClientSession() as s:
        async with s.post(
            gw_url + "/embeddings",
            json={"model": "amazon.titan-embed-text-v2:0", "input": "hey", "encoding_format": "base64"},
        ) as r:
            data = await r.json()
    raw = base64.b64decode(data["data"][0]["embedding"])
    assert struct.unpack("<3f", raw[:12]) == pytest.approx((0.3, 0.5, -0.25))


async def test_cohere_embeddings(client, fake):
    resp = await client.embeddings.create(
        model="cohere.embed-english-v3", input=["one two", "three"], encoding_format="float"
    )
    assert len(resp.data) == 2 and resp.data[0].embedding[0] == pytest.approx(0.7)
    assert resp.usage.prompt_tokens == 3
    assert fake.requests[-1].body == {"texts": ["one two", "three"], "input_type": "search_document"}


async def test_titan_image_generation(client, fake):
    resp = await client.images.generate(
        model="amazon.titan-image-generator-v2:0",
        prompt="a cat",
        n=2,
        size="512x512",
        response_format="b64_json",
    )
    assert len(resp.data) == 2 and base64.b64decode(resp.data[0].b64_json) == fake.image_png
    sent = fake.requests[-1].body
    assert sent["imageGenerationConfig"] == {"numberOfImages": 2, "width": 512, "height": 512}
    assert sent["textToImageParams"] == {"text": "a cat"}


async def test_upstream_errors_are_mapped(client, fake):
    fake.script.append({"status": 429, "error_type": "ThrottlingException", "message": "Too many requests"})
    with pytest.raises(openai.RateLimitError) as info:
        await client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "x"}])
    assert "Too many requests" in info.value.message

    fake.script.append({"status": 400, "error_type": "ValidationException", "message": "max tokens too big"})
    with pytest.raises(openai.BadRequestError) as info:
        await client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "x"}])
    assert "max tokens too big" in info.value.message
    assert info.value.body["code"] == "ValidationException"


async def test_wrong_secret_is_rejected_by_the_fake_and_reported_as_502(gateway_factory, fake):
    gw = await gateway_factory(env=env_for(fake, AWS_SECRET_ACCESS_KEY="not-the-secret"))
    client = openai.AsyncOpenAI(api_key="unused", base_url=gw.proxy_url + "/v1", max_retries=0)
    with pytest.raises(openai.APIStatusError) as info:
        await client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "x"}])
    assert info.value.status_code == 502
    assert "signature we calculated does not match" in info.value.message
    assert "not-the-secret" not in info.value.message


async def test_session_token_is_sent_and_signed(gateway_factory, fake):
    fake.session_token = "FwoGZXIvYXdzEXAMPLETOKEN//+="
    gw = await gateway_factory(env=env_for(fake, AWS_SESSION_TOKEN=fake.session_token))
    client = openai.AsyncOpenAI(api_key="unused", base_url=gw.proxy_url + "/v1", max_retries=0)
    resp = await client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "x"}])
    assert resp.choices[0].message.content == fake.reply_text
    assert "x-amz-security-token" in fake.requests[-1].headers["Authorization"]


async def test_stream_exception_event_becomes_an_error(client, fake):
    fake.script.append({"stream_exception": "throttlingException"})
    stream = await client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "x"}], stream=True
    )
    with pytest.raises(openai.APIError) as info:
        async for _ in stream:
            pass
    assert "throttlingException" in str(info.value)


async def test_stream_cut_midway_is_an_error_not_a_clean_end(client, fake):
    fake.script.append({"cut_after": 3})
    stream = await client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "x"}], stream=True
    )
    with pytest.raises(openai.APIError):
        async for _ in stream:
            pass


async def test_models_are_listed(client):
    models = await client.models.list()
    ids = {m.id for m in models.data if m.owned_by == "bedrock"}
    assert MODEL in ids and "amazon.titan-embed-text-v2:0" in ids


async def test_missing_credentials_is_an_openai_shaped_error(gateway_factory, fake):
    gw = await gateway_factory(env={"AWS_REGION": "us-east-1", "BEDROCK_BASE_URL": fake.base_url})
    client = openai.AsyncOpenAI(api_key="unused", base_url=gw.proxy_url + "/v1", max_retries=0)
    with pytest.raises(openai.APIStatusError) as info:
        await client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "x"}])
    assert info.value.status_code == 500 and "AWS_ACCESS_KEY_ID" in info.value.message
    assert fake.requests == []
