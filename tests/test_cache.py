"""response-cache (memory backend) driven through the gateway with the official OpenAI SDK."""

from __future__ import annotations

import asyncio
import json

import aiohttp
import openai
import pytest

from ferro_proxy.config import ConfigError

HI = [{"role": "user", "content": "hi"}]


def upstream_env(fake) -> dict[str, str]:
    return {"OPENAI_API_KEY": "sk-test-upstream-key", "OPENAI_BASE_URL": fake.base_url}


async def cached_gateway(gateway_factory, fake, cache_config=None, **extra):
    plugins = [{"name": "response-cache", "type": "transform", "config": cache_config or {}}]
    return await gateway_factory({"plugins": plugins, **extra}, env=upstream_env(fake))


def client(gw, key: str = "sk-client-one") -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(api_key=key, base_url=gw.proxy_url + "/v1", max_retries=0)


async def chat(c: openai.AsyncOpenAI, headers=None, **kw):
    kw.setdefault("model", "gpt-4o-mini")
    kw.setdefault("messages", HI)
    raw = await c.chat.completions.with_raw_response.create(extra_headers=headers, **kw)
    return raw.headers, raw.parse()


async def stream_text(c: openai.AsyncOpenAI, headers=None, **kw):
    kw.setdefault("model", "gpt-4o-mini")
    kw.setdefault("messages", HI)
    raw = await c.chat.completions.with_raw_response.create(stream=True, extra_headers=headers, **kw)
    chunks = [chunk async for chunk in raw.parse()]
    return raw.headers, chunks


async def test_second_identical_request_is_served_from_cache(gateway_factory, fake_openai):
    gw = await cached_gateway(gateway_factory, fake_openai)
    c = client(gw)
    h1, first = await chat(c)
    h2, second = await chat(c)
    assert h1["x-ferro-cache"] == "miss" and h2["x-ferro-cache"] == "hit"
    assert second.choices[0].message.content == first.choices[0].message.content == fake_openai.reply_text
    assert second.usage.total_tokens == 19
    assert len(fake_openai.requests) == 1


async def test_anything_that_changes_the_answer_is_a_different_entry(gateway_factory, fake_openai):
    gw = await cached_gateway(gateway_factory, fake_openai)
    c = client(gw)
    await chat(c, temperature=0.2)
    variants = [
        {"temperature": 0.3},
        {"messages": [{"role": "user", "content": "hello"}]},
        {"model": "gpt-4o"},
        {"seed": 7, "temperature": 0.2},
        {"response_format": {"type": "json_object"}, "temperature": 0.2},
        {"stop": ["\n"], "temperature": 0.2},
        {"n": 2, "temperature": 0.2},
        {"temperature": 0.2, "tools": [{"type": "function", "function": {"name": "f", "parameters": {}}}]},
    ]
    for kw in variants:
        headers, _ = await chat(c, **kw)
        assert headers["x-ferro-cache"] == "miss", kw
    assert len(fake_openai.requests) == 1 + len(variants)
    # ... while the user field, which only attributes the request, does not change it
    headers, _ = await chat(c, temperature=0.2, user="someone-else")
    assert headers["x-ferro-cache"] == "hit"


async def test_model_is_compared_after_aliasing(gateway_factory, fake_openai):
    gw = await cached_gateway(gateway_factory, fake_openai, aliases={"fast": "gpt-4o-mini"})
    c = client(gw)
    await chat(c, model="gpt-4o-mini")
    headers, resp = await chat(c, model="fast")
    assert headers["x-ferro-cache"] == "hit"
    assert resp.choices[0].message.content == fake_openai.reply_text
    assert len(fake_openai.requests) == 1


async def test_callers_never_share_entries(gateway_factory, fake_openai):
    gw = await cached_gateway(gateway_factory, fake_openai)
    await chat(client(gw, "sk-client-one"))
    headers, _ = await chat(client(gw, "sk-client-two"))
    assert headers["x-ferro-cache"] == "miss"
    headers, _ = await chat(client(gw, "sk-client-two"))
    assert headers["x-ferro-cache"] == "hit"
    assert len(fake_openai.requests) == 2


async def test_cached_answer_replays_as_a_stream(gateway_factory, fake_openai):
    gw = await cached_gateway(gateway_factory, fake_openai)
    c = client(gw)
    await chat(c)
    headers, chunks = await stream_text(c)
    assert headers["x-ferro-cache"] == "hit"
    assert headers["content-type"].startswith("text/event-stream")
    assert all(ch.object == "chat.completion.chunk" for ch in chunks)
    assert "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices) == fake_openai.reply_text
    assert chunks[-1].choices[0].finish_reason == "stop"
    assert all(ch.usage is None for ch in chunks), "no usage chunk unless the client asked for it"
    _, chunks = await stream_text(c, stream_options={"include_usage": True})
    assert chunks[-1].choices == [] and chunks[-1].usage.total_tokens == 19
    assert len(fake_openai.requests) == 1


async def test_streamed_answer_is_stored_and_served_to_a_non_streaming_client(gateway_factory, fake_openai):
    gw = await cached_gateway(gateway_factory, fake_openai)
    c = client(gw)
    headers, chunks = await stream_text(c)
    assert headers["x-ferro-cache"] == "miss"
    headers, resp = await chat(c)
    assert headers["x-ferro-cache"] == "hit"
    assert resp.object == "chat.completion"
    assert resp.choices[0].message.content == fake_openai.reply_text
    assert resp.choices[0].finish_reason == "stop"
    assert resp.usage.prompt_tokens == 12 and resp.usage.completion_tokens == 7
    assert len(fake_openai.requests) == 1


async def test_streamed_tool_calls_round_trip_through_the_cache(gateway_factory, fake_openai):
    fake_openai.tool_call = {
        "id": "call_abc",
        "type": "function",
        "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
    }
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]
    gw = await cached_gateway(gateway_factory, fake_openai)
    c = client(gw)
    await stream_text(c, tools=tools)
    headers, resp = await chat(c, tools=tools)
    assert headers["x-ferro-cache"] == "hit"
    call = resp.choices[0].message.tool_calls[0]
    assert (call.id, call.function.name, json.loads(call.function.arguments)) == (
        "call_abc",
        "get_weather",
        {"city": "Paris"},
    )
    assert resp.choices[0].finish_reason == "tool_calls" and resp.choices[0].message.content is None
    headers, chunks = await stream_text(c, tools=tools)
    assert headers["x-ferro-cache"] == "hit"
    args = "".join(
        tc.function.arguments or ""
        for ch in chunks
        if ch.choices
        for tc in (ch.choices[0].delta.tool_calls or [])
    )
    assert json.loads(args) == {"city": "Paris"}
    assert len(fake_openai.requests) == 1


async def test_cut_stream_is_never_stored(gateway_factory, fake_openai):
    gw = await cached_gateway(gateway_factory, fake_openai)
    c = client(gw)
    fake_openai.script.append({"cut_after": 2})
    with pytest.raises(openai.APIError):
        await stream_text(c)
    headers, chunks = await stream_text(c)
    assert headers["x-ferro-cache"] == "miss"
    assert "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices) == fake_openai.reply_text
    assert len(fake_openai.requests) == 2


async def test_stream_the_client_abandons_is_not_stored(gateway_factory, fake_openai):
    gw = await cached_gateway(gateway_factory, fake_openai)
    fake_openai.script.append({"chunk_delay": 0.05})
    async with aiohttp.ClientSession() as s:
        body = {"model": "gpt-4o-mini", "messages": HI, "stream": True}
        auth = {"Authorization": "Bearer sk-placeholder"}
        async with s.post(gw.proxy_url + "/v1/chat/completions", json=body, headers=auth) as r:
            await r.content.readline()  # first event, then hang up
    await asyncio.sleep(0.3)  # let the gateway notice and finish the request
    headers, _ = await chat(client(gw, "sk-placeholder"))
    assert headers["x-ferro-cache"] == "miss"


async def test_failed_answers_are_not_stored(gateway_factory, fake_openai):
    gw = await cached_gateway(gateway_factory, fake_openai)
    c = client(gw)
    fake_openai.script.append({"status": 500})
    with pytest.raises(openai.APIStatusError):
        await chat(c)
    headers, resp = await chat(c)
    assert headers["x-ferro-cache"] == "miss" and resp.choices[0].message.content == fake_openai.reply_text


async def test_cache_control_from_the_client(gateway_factory, fake_openai):
    gw = await cached_gateway(gateway_factory, fake_openai)
    c = client(gw)
    await chat(c)
    headers, _ = await chat(c, headers={"Cache-Control": "no-cache"})
    assert headers["x-ferro-cache"] == "bypass"
    assert len(fake_openai.requests) == 2  # no-cache skips the lookup ...
    fake_openai.reply_text = "A fresher answer."
    await chat(c, messages=[{"role": "user", "content": "new"}], headers={"Cache-Control": "no-store"})
    headers, _ = await chat(c, messages=[{"role": "user", "content": "new"}])
    assert headers["x-ferro-cache"] == "miss"  # ... and no-store also keeps the answer out
    headers, _ = await chat(
        c, headers={"Cache-Control": "no-cache"}, messages=[{"role": "user", "content": "b"}]
    )
    headers, resp = await chat(c, messages=[{"role": "user", "content": "b"}])
    assert headers["x-ferro-cache"] == "hit"  # no-cache answers are still stored
    assert resp.choices[0].message.content == "A fresher answer."


async def test_ttl_header_limits_the_age_of_an_answer(gateway_factory, fake_openai):
    gw = await cached_gateway(gateway_factory, fake_openai, {"max_age": "1h"})
    c = client(gw)
    await chat(c)
    await asyncio.sleep(1.1)
    headers, _ = await chat(c, headers={"x-ferro-cache-ttl": "60"})
    assert headers["x-ferro-cache"] == "hit" and int(headers["age"]) >= 1
    headers, _ = await chat(c, headers={"x-ferro-cache-ttl": "1"})
    assert headers["x-ferro-cache"] == "miss"
    assert len(fake_openai.requests) == 2
    headers, _ = await chat(c, headers={"x-ferro-cache-ttl": "0"})
    assert headers["x-ferro-cache"] == "bypass"


async def test_bad_ttl_header_is_an_openai_shaped_400(gateway_factory, fake_openai):
    gw = await cached_gateway(gateway_factory, fake_openai)
    with pytest.raises(openai.BadRequestError) as info:
        await chat(client(gw), headers={"x-ferro-cache-ttl": "soon"})
    assert info.value.body["code"] == "invalid_cache_ttl"
    assert not fake_openai.requests


async def test_max_age_expires_entries(gateway_factory, fake_openai):
    gw = await cached_gateway(gateway_factory, fake_openai, {"max_age": "500ms"})
    c = client(gw)
    await chat(c)
    await asyncio.sleep(0.7)
    headers, _ = await chat(c)
    assert headers["x-ferro-cache"] == "miss"


async def test_least_recently_used_entry_is_evicted(gateway_factory, fake_openai):
    gw = await cached_gateway(gateway_factory, fake_openai, {"max_entries": 2})
    c = client(gw)

    def ask(text):
        return chat(c, messages=[{"role": "user", "content": text}])

    await ask("a")
    await ask("b")
    assert (await ask("a"))[0]["x-ferro-cache"] == "hit"  # a is now the most recent
    await ask("c")  # evicts b
    assert (await ask("a"))[0]["x-ferro-cache"] == "hit"
    assert (await ask("b"))[0]["x-ferro-cache"] == "miss"


async def test_oversized_answers_are_not_stored(gateway_factory, fake_openai):
    gw = await cached_gateway(gateway_factory, fake_openai, {"max_entry_bytes": 100})
    c = client(gw)
    await chat(c)
    assert (await chat(c))[0]["x-ferro-cache"] == "miss"
    await stream_text(c)
    assert (await stream_text(c))[0]["x-ferro-cache"] == "miss"


async def test_completions_and_embeddings_are_cached(gateway_factory, fake_openai):
    gw = await cached_gateway(gateway_factory, fake_openai)
    c = client(gw)
    await c.completions.create(model="gpt-3.5-turbo-instruct", prompt="Tell a story")
    stream = await c.completions.create(model="gpt-3.5-turbo-instruct", prompt="Tell a story", stream=True)
    assert "".join([ch.choices[0].text async for ch in stream if ch.choices]) == "Once upon a time"
    raw = await c.embeddings.with_raw_response.create(model="text-embedding-3-small", input=["a", "b"])
    raw = await c.embeddings.with_raw_response.create(model="text-embedding-3-small", input=["a", "b"])
    assert raw.headers["x-ferro-cache"] == "hit" and len(raw.parse().data) == 2
    assert len(fake_openai.requests) == 2


async def test_endpoints_option_limits_what_is_cached(gateway_factory, fake_openai):
    gw = await cached_gateway(gateway_factory, fake_openai, {"endpoints": ["embeddings"]})
    c = client(gw)
    await chat(c)
    headers, _ = await chat(c)
    assert "x-ferro-cache" not in headers and len(fake_openai.requests) == 2


async def test_hit_and_miss_are_counted_in_metrics(gateway_factory, fake_openai):
    gw = await cached_gateway(gateway_factory, fake_openai)
    c = client(gw)
    await chat(c)
    await chat(c)
    await chat(c)
    async with aiohttp.ClientSession() as s:
        async with s.get(gw.admin_url + "/metrics") as r:
            text = await r.text()
    assert 'ferro_cache_requests_total{result="hit"} 2.0' in text
    assert 'ferro_cache_requests_total{result="miss"} 1.0' in text


@pytest.mark.parametrize(
    ("config", "fragment"),
    [
        ({"backend": "redis"}, "needs a dsn"),
        ({"backend": "redis", "dsn": "http://x"}, "must start with redis://"),
        ({"max_age": 0}, "max_age must be > 0"),
        ({"max_entries": 0}, "max_entries must be >= 1"),
        ({"endpoints": ["images"]}, "plugins[0].config.endpoints[0]"),
        ({"max_ages": 3}, "plugins[0].config.max_ages: unknown field"),
    ],
)
async def test_bad_config_is_reported_with_its_path(gateway_factory, fake_openai, config, fragment):
    with pytest.raises(ConfigError) as info:
        await cached_gateway(gateway_factory, fake_openai, config)
    assert fragment in str(info.value)
