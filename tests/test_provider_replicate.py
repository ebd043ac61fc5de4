"""The Replicate adapter through the OpenAI SDK, against a fake Replicate API on loopback."""

from __future__ import annotations

import asyncio
import base64

import aiohttp
import openai
import pytest

from tests.fakes.gemini_upstream import TINY_PNG_B64
from tests.fakes.replicate_upstream import FakeReplicate

PROVIDERS_COVERED = {"replicate"}
LLAMA = "meta/meta-llama-3-8b-instruct"


@pytest.fixture
async def fake() -> FakeReplicate:
    fake = await FakeReplicate().start()
    yield fake
    await fake.stop()


@pytest.fixture
async def gw(gateway_factory, fake):
    return await gateway_factory(
        env={"REPLICATE_API_TOKEN": fake.api_token, "REPLICATE_BASE_URL": fake.base_url}
    )


@pytest.fixture
def client(gw) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(api_key="sk-placeholder", base_url=gw.proxy_url + "/v1", max_retries=0)


async def test_chat_waits_for_the_prediction(client, fake):
    resp = await client.chat.completions.create(
        model=LLAMA,
        messages=[{"role": "system", "content": "Be kind."}, {"role": "user", "content": "Hi"}],
        max_tokens=64,
        temperature=0.5,
        stop=["\n\n", "###"],
    )
    assert resp.choices[0].message.content == fake.reply_text
    assert resp.choices[0].finish_reason == "stop"
    assert (resp.usage.prompt_tokens, resp.usage.completion_tokens) == (14, 3)
    sent = fake.requests[-1]
    assert sent.path == f"/v1/models/{LLAMA}/predictions"
    assert sent.headers["Prefer"] == "wait" and sent.headers["Authorization"] == f"Bearer {fake.api_token}"
    assert sent.body == {
        "input": {
            "prompt": "Hi",
            "system_prompt": "Be kind.",
            "max_tokens": 64,
            "temperature": 0.5,
            "stop_sequences": "\n\n,###",
        }
    }


async def test_multi_turn_becomes_a_transcript(client, fake):
    await client.chat.completions.create(
        model=LLAMA,
        messages=[
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello!"},
            {"role": "user", "content": "Tell me a joke"},
        ],
    )
    assert (
        fake.requests[-1].body["input"]["prompt"]
        == "User: Hi\n\nAssistant: Hello!\n\nUser: Tell me a joke\n\nAssistant:"
    )


async def test_slow_prediction_is_polled(client, fake):
    fake.script = [{"slow": 2}]
    resp = await client.chat.completions.create(model=LLAMA, messages=[{"role": "user", "content": "Hi"}])
    assert resp.choices[0].message.content == fake.reply_text
    polls = [r for r in fake.requests if r.method == "GET" and r.path.startswith("/v1/predictions/")]
    assert len(polls) == 2


async def test_failed_prediction_is_an_error(client, fake):
    fake.script = [{"fail": "CUDA out of memory"}]
    with pytest.raises(openai.APIStatusError) as info:
        await client.chat.completions.create(model=LLAMA, messages=[{"role": "user", "content": "Hi"}])
    assert info.value.status_code == 502 and "CUDA out of memory" in info.value.message


async def test_streamed_chat_reads_the_stream_url(client, fake):
    stream = await client.chat.completions.create(
        model=LLAMA,
        messages=[{"role": "user", "content": "Hi"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = [c async for c in stream]
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == fake.reply_text
    assert len([c for c in chunks if c.choices and c.choices[0].delta.content]) == 3
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].choices == [] and chunks[-1].usage.prompt_tokens == 14
    create = next(r for r in fake.requests if r.method == "POST")
    assert create.body["stream"] is True and "Prefer" not in create.headers
    assert any(
        r.path.startswith("/stream/") and r.headers["Accept"] == "text/event-stream" for r in fake.requests
    )


async def test_stream_error_event_and_cut_stream(client, fake):
    fake.script = [{"stream_error": "the model crashed"}, {"cut_after": 1}]
    for expected in ("the model crashed", "without a done event"):
        stream = await client.chat.completions.create(
            model=LLAMA, messages=[{"role": "user", "content": "Hi"}], stream=True
        )
        with pytest.raises(openai.APIError) as info:
            async for _ in stream:
                pass
        assert expected in info.value.message


async def test_abandoned_stream_cancels_the_prediction(client, fake):
    fake.script = [{"hold": True}]
    stream = await client.chat.completions.create(
        model=LLAMA, messages=[{"role": "user", "content": "Hi"}], stream=True
    )
    async for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            break  # the user stops reading after the first words
    await stream.close()
    for _ in range(200):  # wait (bounded) for the gateway to notice and cancel upstream
        if fake.canceled:
            break
        await asyncio.sleep(0.02)
    assert fake.canceled == ["pred0001"]


async def test_image_input_url_and_base64(client, fake):
    for url in ("https://example.com/dog.jpg", "data:image/png;base64," + TINY_PNG_B64):
        await client.chat.completions.create(
            model="yorickvp/llava-13b",
            messages=[
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "What is this?"},
                        {"type": "image_url", "image_url": {"url": url}},
                    ],
                }
            ],
        )
        assert fake.requests[-1].body["input"] == {"prompt": "What is this?", "image": url}


async def test_pinned_version_uses_the_predictions_endpoint(client, fake):
    version = "5a6809ca6288247d06daf6365557e5e429063f32a21146b2a807c682652136b8"
    resp = await client.chat.completions.create(
        model=f"replicate/yorickvp/llava-13b:{version}", messages=[{"role": "user", "content": "Hi"}]
    )
    assert resp.choices[0].message.content == fake.reply_text
    assert fake.requests[-1].path == "/v1/predictions" and fake.requests[-1].body["version"] == version


async def test_image_generation(client, fake):
    resp = await client.images.generate(
        model="black-forest-labs/flux-schnell", prompt="a cat", n=2, size="1024x1792"
    )
    assert [d.url for d in resp.data] == [f"{fake.base_url}/files/pred0001/out-{i}.png" for i in range(2)]
    assert fake.requests[-1].body == {"input": {"prompt": "a cat", "num_outputs": 2, "aspect_ratio": "9:16"}}
    b64 = await client.images.generate(
        model="black-forest-labs/flux-schnell", prompt="a cat", response_format="b64_json"
    )
    assert base64.b64decode(b64.data[0].b64_json).startswith(b"\x89PNG")


async def test_upstream_errors(client, fake):
    fake.script = [
        {"status": 429, "retry_after": 5, "detail": "Request was throttled. Expected available in 5 seconds."}
    ]
    with pytest.raises(openai.RateLimitError) as info:
        await client.chat.completions.create(model=LLAMA, messages=[{"role": "user", "content": "Hi"}])
    assert "throttled" in info.value.message and info.value.response.headers["Retry-After"] == "5"
    with pytest.raises(openai.NotFoundError) as info:
        await client.chat.completions.create(
            model="replicate/nobody/nothing", messages=[{"role": "user", "content": "Hi"}]
        )
    assert "could not be found" in info.value.message
    with pytest.raises(openai.BadRequestError) as info:
        await client.chat.completions.create(
            model=LLAMA,
            messages=[{"role": "user", "content": "Hi"}],
            tools=[{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}],
        )
    assert "tools are not supported" in info.value.message


async def test_bad_token_is_502_without_the_token(gateway_factory, fake):
    gw = await gateway_factory(
        env={"REPLICATE_API_TOKEN": "r8_wrong_secret", "REPLICATE_BASE_URL": fake.base_url}
    )
    client = openai.AsyncOpenAI(api_key="sk-placeholder", base_url=gw.proxy_url + "/v1", max_retries=0)
    with pytest.raises(openai.APIStatusError) as info:
        await client.chat.completions.create(model=LLAMA, messages=[{"role": "user", "content": "Hi"}])
    assert info.value.status_code == 502 and "r8_wrong_secret" not in info.value.response.text


async def test_models_are_listed(gw):
    async with aiohttp.ClientSession() as s, s.get(gw.proxy_url + "/v1/models") as r:
        ids = {m["id"] for m in (await r.json())["data"] if m["owned_by"] == "replicate"}
    assert {LLAMA, "black-forest-labs/flux-schnell"} <= ids
