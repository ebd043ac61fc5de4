"""Hugging Face through the OpenAI SDK: router chat, feature-extraction embeddings,
text-to-image, errors — against a fake HF router."""

from __future__ import annotations

import base64

import openai
import pytest

from tests.fakes.hugging_face_upstream import PNG, FakeHuggingFace

PROVIDERS_COVERED = {"hugging-face"}
MODEL = "meta-llama/Llama-3.3-70B-Instruct"


@pytest.fixture
async def fake():
    fake = await FakeHuggingFace().start()
    yield fake
    await fake.stop()


@pytest.fixture
async def client(gateway_factory, fake):
    gw = await gateway_factory(env={"HUGGING_FACE_API_KEY": fake.token, "HUGGING_FACE_BASE_URL": fake.root})
    return openai.AsyncOpenAI(api_key="unused", base_url=gw.proxy_url + "/v1", max_retries=0)


async def test_chat_through_the_router(client, fake):
    resp = await client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Hi"}])
    assert resp.choices[0].message.content == fake.reply_text
    sent = fake.requests[-1]
    assert sent.path == "/v1/chat/completions" and sent.headers["Authorization"] == f"Bearer {fake.token}"
    assert sent.body["model"] == MODEL


async def test_provider_addressing_keeps_the_org_slash(client, fake):
    await client.chat.completions.create(
        model="hugging-face/HuggingFaceTB/SmolLM3-3B", messages=[{"role": "user", "content": "Hi"}]
    )
    assert fake.requests[-1].body["model"] == "HuggingFaceTB/SmolLM3-3B"


async def test_streamed_chat_with_usage(client, fake):
    stream = await client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Hi"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    text, usage = "", None
    async for chunk in stream:
        usage = chunk.usage or usage
        text += "".join(c.delta.content or "" for c in chunk.choices)
    assert text == fake.reply_text and usage.total_tokens == 19


async def test_tool_call_round_trip(client, fake):
    fake.tool_call = {
        "id": "call_hf",
        "type": "function",
        "function": {"name": "add", "arguments": '{"a":1,"b":2}'},
    }
    tools = [{"type": "function", "function": {"name": "add", "parameters": {"type": "object"}}}]
    first = await client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "1+2"}], tools=tools
    )
    call = first.choices[0].message.tool_calls[0]
    assert call.function.arguments == '{"a":1,"b":2}'
    final = await client.chat.completions.create(
        model=MODEL,
        tools=tools,
        messages=[
            {"role": "user", "content": "1+2"},
            {"role": "assistant", "content": None, "tool_calls": [call.model_dump()]},
            {"role": "tool", "tool_call_id": "call_hf", "content": "3"},
        ],
    )
    assert final.choices[0].message.content == fake.reply_text
    assert fake.requests[-1].body["messages"][2]["tool_call_id"] == "call_hf"


async def test_image_input_url_and_base64_forwarded(client, fake):
    parts = [
        {"type": "text", "text": "describe"},
        {"type": "image_url", "image_url": {"url": "https://example.invalid/cat.png"}},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}},
    ]
    await client.chat.completions.create(
        model="Qwen/Qwen2.5-VL-7B-Instruct", messages=[{"role": "user", "content": parts}]
    )
    assert fake.requests[-1].body["messages"][0]["content"] == parts


async def test_feature_extraction_embeddings(client, fake):
    resp = await client.embeddings.create(
        model="sentence-transformers/all-MiniLM-L6-v2", input=["hello", "hi"], encoding_format="float"
    )
    assert [d.embedding for d in resp.data] == [[5.0, 0.5, -0.5], [2.0, 0.5, -0.5]]
    sent = fake.requests[-1]
    assert (
        sent.path == "/hf-inference/models/sentence-transformers/all-MiniLM-L6-v2/pipeline/feature-extraction"
    )
    assert sent.body == {"inputs": ["hello", "hi"]}
    # default SDK call uses base64 on the wire; the SDK decodes it back to the same floats
    resp = await client.embeddings.create(model="sentence-transformers/all-MiniLM-L6-v2", input="hello")
    assert resp.data[0].embedding == [5.0, 0.5, -0.5]


async def test_token_level_features_are_mean_pooled(client):
    resp = await client.embeddings.create(
        model="org/token-level-bert", input=["abc"], encoding_format="float"
    )
    assert resp.data[0].embedding == [4.0, 2.0]


async def test_text_to_image(client, fake):
    resp = await client.images.generate(
        model="black-forest-labs/FLUX.1-schnell",
        prompt="a red fox",
        size="512x512",
        response_format="b64_json",
    )
    assert base64.b64decode(resp.data[0].b64_json) == PNG
    assert fake.requests[-1].body == {"inputs": "a red fox", "parameters": {"width": 512, "height": 512}}


async def test_upstream_errors_are_mapped(client, fake):
    fake.script.append({"status": 503, "message": "Model is currently loading"})
    with pytest.raises(openai.APIStatusError) as info:
        await client.embeddings.create(model="BAAI/bge-large-en-v1.5", input="x")
    assert info.value.status_code == 502 and "currently loading" in info.value.message
    fake.script.append({"status": 429, "retry_after": 2})
    with pytest.raises(openai.RateLimitError):
        await client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "x"}])


async def test_wrong_token_is_a_502(gateway_factory, fake):
    gw = await gateway_factory(env={"HUGGING_FACE_API_KEY": "hf_wrong", "HUGGING_FACE_BASE_URL": fake.root})
    client = openai.AsyncOpenAI(api_key="unused", base_url=gw.proxy_url + "/v1", max_retries=0)
    with pytest.raises(openai.APIStatusError) as info:
        await client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "x"}])
    assert info.value.status_code == 502 and "hf_wrong" not in info.value.message


async def test_models_are_listed(client):
    ids = {m.id for m in (await client.models.list()).data if m.owned_by == "hugging-face"}
    assert MODEL in ids
