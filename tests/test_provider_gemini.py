"""The Gemini adapter through the OpenAI SDK, against a fake Gemini API on loopback."""

from __future__ import annotations

import base64

import aiohttp
import openai
import pytest

from tests.fakes.gemini_upstream import TINY_PNG_B64, FakeGoogle

PROVIDERS_COVERED = {"gemini"}

WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather for a city",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string"},
                "unit": {"type": ["string", "null"], "enum": ["c", "f"]},
            },
            "required": ["city"],
            "additionalProperties": False,
        },
    },
}


@pytest.fixture
async def fake() -> FakeGoogle:
    fake = await FakeGoogle().start()
    yield fake
    await fake.stop()


@pytest.fixture
async def gw(gateway_factory, fake):
    return await gateway_factory(env={"GEMINI_API_KEY": fake.api_key, "GEMINI_BASE_URL": fake.base_url})


@pytest.fixture
def client(gw) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(api_key="sk-placeholder", base_url=gw.proxy_url + "/v1", max_retries=0)


async def test_chat_translates_request_and_response(client, fake):
    resp = await client.chat.completions.create(
        model="gemini-2.0-flash",
        messages=[
            {"role": "system", "content": "Be terse."},
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello!"},
            {"role": "user", "content": "How are you?"},
        ],
        max_tokens=50,
        temperature=0.3,
        top_p=0.9,
        stop=["END"],
        user="user-42",
    )
    assert resp.choices[0].message.content == fake.reply_text
    assert resp.choices[0].finish_reason == "stop"
    assert resp.object == "chat.completion" and resp.id.startswith("chatcmpl-") and resp.created > 0
    assert resp.usage.prompt_tokens == 11
    assert resp.usage.completion_tokens == 9  # candidates + thoughts
    assert resp.usage.prompt_tokens_details.cached_tokens == 4
    assert resp.usage.completion_tokens_details.reasoning_tokens == 4

    sent = fake.requests[-1]
    assert sent.path == "/v1beta/models/gemini-2.0-flash:generateContent"
    assert sent.headers["x-goog-api-key"] == fake.api_key
    assert "Authorization" not in sent.headers
    assert sent.body["systemInstruction"] == {"parts": [{"text": "Be terse."}]}
    assert [c["role"] for c in sent.body["contents"]] == ["user", "model", "user"]
    assert sent.body["contents"][1]["parts"] == [{"text": "Hello!"}]
    assert sent.body["generationConfig"] == {
        "maxOutputTokens": 50,
        "temperature": 0.3,
        "topP": 0.9,
        "stopSequences": ["END"],
    }


async def test_streamed_chat_arrives_in_chunks(client, fake):
    stream = await client.chat.completions.create(
        model="gemini-2.0-flash", messages=[{"role": "user", "content": "Hi"}], stream=True
    )
    pieces, finishes = [], []
    async for chunk in stream:
        assert chunk.choices, "no usage chunk unless the client asked for it"
        pieces.append(chunk.choices[0].delta.content or "")
        finishes.append(chunk.choices[0].finish_reason)
    assert "".join(pieces) == fake.reply_text
    assert len([p for p in pieces if p]) == len(fake.reply_text.split(" "))
    assert finishes[-1] == "stop"
    assert fake.requests[-1].path == "/v1beta/models/gemini-2.0-flash:streamGenerateContent?alt=sse"


async def test_streamed_chat_usage_chunk_when_asked(client):
    stream = await client.chat.completions.create(
        model="gemini-2.0-flash",
        messages=[{"role": "user", "content": "Hi"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = [c async for c in stream]
    assert chunks[-1].choices == []
    assert chunks[-1].usage.prompt_tokens == 11 and chunks[-1].usage.completion_tokens == 9


async def test_tool_call_round_trip(client, fake):
    fake.tool_call = {"name": "get_weather", "args": {"city": "Paris"}}
    messages = [{"role": "user", "content": "Weather in Paris?"}]
    first = await client.chat.completions.create(
        model="gemini-2.0-flash", messages=messages, tools=[WEATHER_TOOL], tool_choice="required"
    )
    call = first.choices[0].message.tool_calls[0]
    assert first.choices[0].finish_reason == "tool_calls"
    assert call.function.name == "get_weather" and call.id
    assert call.function.arguments == '{"city":"Paris"}'
    decl = fake.requests[-1].body["tools"][0]["functionDeclarations"][0]
    assert decl["name"] == "get_weather"
    assert decl["parameters"]["properties"]["unit"] == {
        "type": "STRING",
        "nullable": True,
        "enum": ["c", "f"],
    }
    assert "additionalProperties" not in decl["parameters"]
    assert fake.requests[-1].body["toolConfig"] == {"functionCallingConfig": {"mode": "ANY"}}

    messages += [
        first.choices[0].message.model_dump(exclude_none=True),
        {"role": "tool", "tool_call_id": call.id, "content": '{"temp_c": 18}'},
    ]
    final = await client.chat.completions.create(
        model="gemini-2.0-flash", messages=messages, tools=[WEATHER_TOOL]
    )
    assert final.choices[0].message.content == fake.reply_text
    contents = fake.requests[-1].body["contents"]
    assert contents[1] == {
        "role": "model",
        "parts": [{"functionCall": {"name": "get_weather", "args": {"city": "Paris"}}}],
    }
    assert contents[2] == {
        "role": "user",
        "parts": [{"functionResponse": {"name": "get_weather", "response": {"temp_c": 18}}}],
    }


async def test_streamed_tool_call(client, fake):
    fake.tool_call = {"name": "get_weather", "args": {"city": "Oslo"}}
    stream = await client.chat.completions.create(
        model="gemini-2.0-flash",
        messages=[{"role": "user", "content": "Weather in Oslo?"}],
        tools=[WEATHER_TOOL],
        stream=True,
    )
    head, args, finish = None, "", None
    async for chunk in stream:
        choice = chunk.choices[0]
        for tc in choice.delta.tool_calls or []:
            if tc.id:
                head = tc
            args += tc.function.arguments or ""
        finish = choice.finish_reason or finish
    assert (
        head is not None
        and head.function.name == "get_weather"
        and head.type == "function"
        and head.index == 0
    )
    assert args == '{"city":"Oslo"}'
    assert finish == "tool_calls"


async def test_image_inputs_url_and_base64(client, fake):
    data_url = "data:image/png;base64," + TINY_PNG_B64
    await client.chat.completions.create(
        model="gemini-2.0-flash",
        messages=[
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "What is in these?"},
                    {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}},
                    {"type": "image_url", "image_url": {"url": data_url}},
                ],
            }
        ],
    )
    parts = fake.requests[-1].body["contents"][0]["parts"]
    assert parts[1] == {"fileData": {"mimeType": "image/png", "fileUri": "https://example.com/cat.png"}}
    assert parts[2] == {"inlineData": {"mimeType": "image/png", "data": TINY_PNG_B64}}


async def test_json_schema_response_format(client, fake):
    schema = {
        "type": "object",
        "properties": {"answer": {"type": "string"}},
        "required": ["answer"],
        "additionalProperties": False,
    }
    await client.chat.completions.create(
        model="gemini-2.0-flash",
        messages=[{"role": "user", "content": "Answer in JSON"}],
        response_format={
            "type": "json_schema",
            "json_schema": {"name": "a", "schema": schema, "strict": True},
        },
    )
    config = fake.requests[-1].body["generationConfig"]
    assert config["responseMimeType"] == "application/json"
    assert config["responseSchema"] == {
        "type": "OBJECT",
        "properties": {"answer": {"type": "STRING"}},
        "required": ["answer"],
    }


async def test_finish_reasons_and_blocked_prompt(client, fake):
    fake.script = [{"finish": "MAX_TOKENS"}, {"finish": "SAFETY"}, {"block": True}]
    reasons = []
    for _ in range(3):
        resp = await client.chat.completions.create(
            model="gemini-2.0-flash", messages=[{"role": "user", "content": "Hi"}]
        )
        reasons.append(resp.choices[0].finish_reason)
    assert reasons == ["length", "content_filter", "content_filter"]


async def test_embeddings(client, fake):
    resp = await client.embeddings.create(model="text-embedding-004", input=["alpha", "beta"], dimensions=4)
    assert [d.index for d in resp.data] == [0, 1]
    assert resp.data[1].embedding == pytest.approx([0.5, 1.0, 1.5, 2.0])
    sent = fake.requests[-1]
    assert sent.path == "/v1beta/models/text-embedding-004:batchEmbedContents"
    assert sent.body["requests"][0] == {
        "model": "models/text-embedding-004",
        "content": {"parts": [{"text": "alpha"}]},
        "outputDimensionality": 4,
    }
    floats = await client.embeddings.create(model="text-embedding-004", input="x", encoding_format="float")
    assert floats.data[0].embedding == pytest.approx([0.25, 0.5, 0.75])


async def test_imagen_images(client, fake):
    resp = await client.images.generate(
        model="imagen-3.0-generate-002", prompt="a red fox", n=2, size="1792x1024"
    )
    assert len(resp.data) == 2 and base64.b64decode(resp.data[0].b64_json).startswith(b"\x89PNG")
    sent = fake.requests[-1]
    assert sent.path == "/v1beta/models/imagen-3.0-generate-002:predict"
    assert sent.body == {
        "instances": [{"prompt": "a red fox"}],
        "parameters": {"sampleCount": 2, "aspectRatio": "16:9"},
    }
    with pytest.raises(openai.BadRequestError) as info:
        await client.images.generate(model="imagen-3.0-generate-002", prompt="something blocked")
    assert info.value.body["code"] == "content_filter"


async def test_upstream_errors_are_mapped(client, fake):
    fake.script = [
        {"status": 429, "retry_after": 7, "message": "Resource has been exhausted (e.g. check quota)."}
    ]
    with pytest.raises(openai.RateLimitError) as info:
        await client.chat.completions.create(
            model="gemini-2.0-flash", messages=[{"role": "user", "content": "Hi"}]
        )
    assert "Resource has been exhausted" in info.value.message
    assert info.value.response.headers["Retry-After"] == "7"
    assert info.value.body["code"] == "RESOURCE_EXHAUSTED"

    with pytest.raises(openai.NotFoundError) as info:
        await client.chat.completions.create(
            model="gemini/gemini-9-ultra", messages=[{"role": "user", "content": "Hi"}]
        )
    assert "gemini-9-ultra is not found" in info.value.message

    # a request the real API rejects (an unknown part type) comes back as a 400, not a crash
    with pytest.raises(openai.BadRequestError) as info:
        await client.chat.completions.create(
            model="gemini-2.0-flash",
            messages=[{"role": "user", "content": [{"type": "video_url", "video_url": "x"}]}],
        )
    assert "unsupported content part type" in info.value.message


async def test_wrong_key_is_a_gateway_error_without_the_key(gateway_factory, fake):
    gw = await gateway_factory(env={"GEMINI_API_KEY": "wrong-secret-key", "GEMINI_BASE_URL": fake.base_url})
    client = openai.AsyncOpenAI(api_key="sk-placeholder", base_url=gw.proxy_url + "/v1", max_retries=0)
    with pytest.raises(openai.APIStatusError) as info:
        await client.chat.completions.create(
            model="gemini-2.0-flash", messages=[{"role": "user", "content": "Hi"}]
        )
    assert info.value.status_code == 502
    assert "API key not valid" in info.value.message
    assert "wrong-secret-key" not in info.value.response.text


async def test_stream_cut_short_ends_in_an_error(client, fake):
    fake.script = [{"cut_after": 1}]
    stream = await client.chat.completions.create(
        model="gemini-2.0-flash", messages=[{"role": "user", "content": "Hi"}], stream=True
    )
    with pytest.raises(openai.APIError) as info:
        async for _ in stream:
            pass
    assert "ended the stream early" in info.value.message


async def test_models_are_listed(gw):
    async with aiohttp.ClientSession() as s, s.get(gw.proxy_url + "/v1/models") as r:
        ids = {m["id"] for m in (await r.json())["data"] if m["owned_by"] == "gemini"}
    assert {"gemini-2.0-flash", "gemini-2.5-pro", "text-embedding-004"} <= ids
