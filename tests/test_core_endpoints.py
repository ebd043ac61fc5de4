"""The OpenAI surface through the official SDK, against a fake OpenAI upstream."""

from __future__ import annotations

import aiohttp
import pytest

PROVIDERS_COVERED = {"openai"}


async def test_chat(openai_client, fake_openai):
    resp = await openai_client.chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}], temperature=0.2
    )
    assert resp.choices[0].message.content == fake_openai.reply_text
    assert resp.usage.total_tokens == 19
    sent = fake_openai.requests[-1]
    assert sent.body["temperature"] == 0.2 and sent.body["messages"][0]["content"] == "hi"


async def test_streamed_chat_drops_usage_chunk_unless_asked(openai_client, fake_openai):
    stream = await openai_client.chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}], stream=True
    )
    text = ""
    async for chunk in stream:
        assert chunk.choices, "the usage-only chunk must not reach a client that did not ask for it"
        text += chunk.choices[0].delta.content or ""
    assert text == fake_openai.reply_text
    # the gateway asked upstream for usage anyway, to count tokens
    assert fake_openai.requests[-1].body["stream_options"] == {"include_usage": True}


async def test_streamed_chat_keeps_usage_chunk_when_asked(openai_client):
    stream = await openai_client.chat.completions.create(
        model="gpt-4o-mini",
        messages=[{"role": "user", "content": "hi"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    usage = None
    async for chunk in stream:
        if chunk.usage:
            usage = chunk.usage
    assert usage is not None and usage.completion_tokens == 7


async def test_completions_stream_and_not(openai_client):
    resp = await openai_client.completions.create(model="gpt-3.5-turbo-instruct", prompt="Tell a story")
    assert resp.choices[0].text == "Once upon a time"
    stream = await openai_client.completions.create(model="gpt-3.5-turbo-instruct", prompt="x", stream=True)
    assert "".join([c.choices[0].text async for c in stream if c.choices]) == "Once upon a time"


async def test_embeddings(openai_client):
    resp = await openai_client.embeddings.create(model="text-embedding-3-small", input=["a", "b"])
    assert len(resp.data) == 2 and resp.data[1].index == 1
    assert resp.usage.prompt_tokens == 6


async def test_images(openai_client, fake_openai):
    resp = await openai_client.images.generate(model="dall-e-3", prompt="a cat")
    assert resp.data[0].url.endswith("cat.png")
    assert fake_openai.requests[-1].body["prompt"] == "a cat"


async def test_models_lists_catalog_models(openai_client):
    models = await openai_client.models.list()
    ids = {m.id async for m in models}
    assert "gpt-4o-mini" in ids


async def test_other_v1_routes_pass_through(gateway, fake_openai):
    async with aiohttp.ClientSession() as s:
        async with s.post(
            gateway.proxy_url + "/v1/moderations?x=1",
            json={"model": "omni-moderation-latest", "input": "hello"},
        ) as r:
            assert r.status == 200
            body = await r.json()
    assert body["object"] == "passthrough" and body["echo"]["input"] == "hello"
    assert fake_openai.requests[-1].path == "/v1/moderations?x=1"
    assert fake_openai.requests[-1].headers["Authorization"] == "Bearer sk-test-upstream-key"


async def test_passthrough_refuses_a_path_naming_another_host(gateway, fake_openai):
    before = len(fake_openai.requests)
    async with aiohttp.ClientSession() as s:
        async with s.get(gateway.proxy_url + "/v1/http://evil.example/steal") as r:
            assert r.status == 400
            assert (await r.json())["error"]["code"] == "invalid_proxy_path"
    # the "//" is an empty segment: refused before any upstream is asked
    assert len(fake_openai.requests) == before


async def test_request_id_is_adopted_and_overhead_reported(gateway):
    async with aiohttp.ClientSession() as s:
        async with s.post(
            gateway.proxy_url + "/v1/chat/completions",
            json={"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "x"}]},
            headers={"X-Request-ID": "req-abc-123"},
        ) as r:
            assert r.status == 200
            assert r.headers["X-Request-ID"] == "req-abc-123"
            assert float(r.headers["x-ferro-overhead-ms"]) >= 0
        async with s.post(
            gateway.proxy_url + "/v1/chat/completions",
            json={"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "x"}]},
        ) as r:
            assert len(r.headers["X-Request-ID"]) >= 16


async def test_metrics_count_requests_and_tokens(gateway, openai_client):
    await openai_client.chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}]
    )
    stream = await openai_client.chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}], stream=True
    )
    async for _ in stream:
        pass
    async with aiohttp.ClientSession() as s:
        async with s.get(gateway.admin_url + "/metrics") as r:
            text = await r.text()
    assert (
        'ferro_requests_total{endpoint="chat",model="gpt-4o-mini",provider="openai",status="200"} 2.0' in text
    )
    assert 'ferro_tokens_total{direction="input",model="gpt-4o-mini",provider="openai"} 24.0' in text
    assert "ferro_time_to_first_token_seconds_count" in text
    assert "ferro_request_duration_seconds_bucket" in text
    assert "ferro_requests_in_flight 0.0" in text
    assert 'ferro_cost_usd_total{model="gpt-4o-mini",provider="openai"}' in text


async def test_cost_header_from_catalog(gateway):
    async with aiohttp.ClientSession() as s:
        async with s.post(
            gateway.proxy_url + "/v1/chat/completions",
            json={"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "x"}]},
        ) as r:
            # 12 input tokens at $0.15/M + 7 output at $0.60/M
            assert float(r.headers["x-ferro-cost-usd"]) == pytest.approx((12 * 0.15 + 7 * 0.6) / 1e6)


async def test_health_and_ready(gateway):
    async with aiohttp.ClientSession() as s:
        for url in (gateway.proxy_url + "/health", gateway.admin_url + "/health"):
            async with s.get(url) as r:
                assert r.status == 200
                body = await r.json()
                assert body["status"] == "ok" and "openai" in body["providers"]
        async with s.get(gateway.admin_url + "/ready") as r:
            assert r.status == 200
        async with s.get(gateway.proxy_url + "/metrics") as r:
            assert r.status == 404, "metrics live on the admin listener only"
