"""Azure AI Foundry through the OpenAI SDK against a fake Azure AI Model Inference endpoint."""

from __future__ import annotations

import openai
import pytest

from tests.fakes.azure_foundry_upstream import FakeAzureFoundry

PROVIDERS_COVERED = {"azure-foundry"}
MODEL = "Phi-4"


@pytest.fixture
async def fake():
    fake = await FakeAzureFoundry().start()
    yield fake
    await fake.stop()


@pytest.fixture
async def client(gateway_factory, fake):
    gw = await gateway_factory(
        env={"AZURE_FOUNDRY_API_KEY": fake.api_key, "AZURE_FOUNDRY_ENDPOINT": fake.endpoint}
    )
    return openai.AsyncOpenAI(api_key="unused", base_url=gw.proxy_url + "/v1", max_retries=0)


async def test_chat_goes_to_the_models_route_with_api_key(client, fake):
    resp = await client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Hi"}],
        max_completion_tokens=64,
        user="someone",
    )
    assert resp.choices[0].message.content == fake.reply_text
    assert resp.usage.total_tokens == 19
    sent = fake.requests[-1]
    assert sent.path == "/models/chat/completions?api-version=2024-05-01-preview"
    assert sent.headers["api-key"] == fake.api_key and "Authorization" not in sent.headers
    assert (
        sent.body["max_tokens"] == 64 and "max_completion_tokens" not in sent.body and "user" not in sent.body
    )
    assert "extra-parameters" not in sent.headers


async def test_model_specific_parameters_pass_through(client, fake):
    await client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Hi"}], extra_body={"safe_prompt": True}
    )
    sent = fake.requests[-1]
    assert sent.body["safe_prompt"] is True and sent.headers["extra-parameters"] == "pass-through"


async def test_streamed_chat(client, fake):
    stream = await client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Hi"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    text = ""
    async for chunk in stream:
        text += "".join(c.delta.content or "" for c in chunk.choices)
    assert text == fake.reply_text
    assert "stream_options" not in fake.requests[-1].body  # not part of the inference API


async def test_tool_call_round_trip(client, fake):
    fake.tool_call = {
        "id": "call_f1",
        "type": "function",
        "function": {"name": "lookup", "arguments": '{"q":"x"}'},
    }
    tools = [{"type": "function", "function": {"name": "lookup", "parameters": {"type": "object"}}}]
    first = await client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "look it up"}], tools=tools, tool_choice="auto"
    )
    call = first.choices[0].message.tool_calls[0]
    assert call.function.name == "lookup" and first.choices[0].finish_reason == "tool_calls"
    final = await client.chat.completions.create(
        model=MODEL,
        tools=tools,
        messages=[
            {"role": "user", "content": "look it up"},
            {"role": "assistant", "content": None, "tool_calls": [call.model_dump()]},
            {"role": "tool", "tool_call_id": call.id, "content": "found"},
        ],
    )
    assert final.choices[0].message.content == fake.reply_text
    assert fake.requests[-1].body["messages"][2] == {
        "role": "tool",
        "tool_call_id": "call_f1",
        "content": "found",
    }


async def test_image_input_url_and_base64_forwarded(client, fake):
    parts = [
        {"type": "text", "text": "describe"},
        {"type": "image_url", "image_url": {"url": "https://example.invalid/cat.png"}},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}},
    ]
    await client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": parts}])
    assert fake.requests[-1].body["messages"][0]["content"] == parts


async def test_embeddings(client, fake):
    resp = await client.embeddings.create(
        model="Cohere-embed-v3-english", input=["a", "b"], encoding_format="float"
    )
    assert len(resp.data) == 2 and resp.usage.prompt_tokens == 6
    assert fake.requests[-1].path.startswith("/models/embeddings?api-version=")


async def test_upstream_errors_are_mapped(client, fake):
    fake.script.append({"status": 429, "retry_after": 3, "message": "Requests exceeded quota"})
    with pytest.raises(openai.RateLimitError) as info:
        await client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "x"}])
    assert "Requests exceeded quota" in info.value.message
    assert info.value.response.headers["Retry-After"] == "3"


async def test_wrong_key_is_502_without_leaking_it(gateway_factory, fake):
    gw = await gateway_factory(
        env={"AZURE_FOUNDRY_API_KEY": "bad-key-123", "AZURE_FOUNDRY_ENDPOINT": fake.endpoint}
    )
    client = openai.AsyncOpenAI(api_key="unused", base_url=gw.proxy_url + "/v1", max_retries=0)
    with pytest.raises(openai.APIStatusError) as info:
        await client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "x"}])
    assert info.value.status_code == 502 and "bad-key-123" not in info.value.message


async def test_base_url_override_is_used_verbatim(gateway_factory, fake):
    gw = await gateway_factory(
        env={
            "AZURE_FOUNDRY_API_KEY": fake.api_key,
            "AZURE_FOUNDRY_ENDPOINT": "https://unused.services.ai.azure.com",
            "AZURE_FOUNDRY_BASE_URL": fake.endpoint + "/models",
            "AZURE_FOUNDRY_API_VERSION": "2025-04-01",
        }
    )
    client = openai.AsyncOpenAI(api_key="unused", base_url=gw.proxy_url + "/v1", max_retries=0)
    await client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "x"}])
    assert fake.requests[-1].path == "/models/chat/completions?api-version=2025-04-01"


async def test_models_are_listed(client):
    ids = {m.id for m in (await client.models.list()).data if m.owned_by == "azure-foundry"}
    assert MODEL in ids
