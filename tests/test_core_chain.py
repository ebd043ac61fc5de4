"""The filter-chain contract: change the request, answer locally, call next twice, see and
change streamed chunks, stages, fail closed / fail open."""

from __future__ import annotations

import aiohttp
import openai
import pytest

from ferro_proxy.chain import FILTERS, Filter, register_filter
from ferro_proxy.config import Base
from ferro_proxy.errors import GatewayError
from ferro_proxy.exchange import Reply


class ShoutConfig(Base):
    suffix: str = "!"


@register_filter
class Shout(Filter):
    """Rewrites the prompt on the way in and upper-cases every streamed delta on the way out."""

    name = "test-shout"
    type = "transform"
    Config = ShoutConfig

    async def handle(self, ex, next):
        ex.body["messages"][-1]["content"] += self.config.suffix
        reply = await next(ex)
        if reply.is_stream:

            async def upper(chunks):
                async for chunk in chunks:
                    if chunk.kind == "data" and chunk.json().get("choices"):
                        data = chunk.json()
                        delta = data["choices"][0]["delta"]
                        if delta.get("content"):
                            delta["content"] = delta["content"].upper()
                            chunk.set_json(data)
                    yield chunk

            reply.wrap_stream(upper)
        else:
            data = reply.json()
            data["choices"][0]["message"]["content"] = data["choices"][0]["message"]["content"].upper()
        return reply


@register_filter
class Canned(Filter):
    name = "test-canned"
    type = "guardrail"
    default_stages = ("before_request",)

    async def on_request(self, ex):
        if "canned" in str(ex.body.get("messages")):
            return Reply(
                200,
                data={
                    "id": "x",
                    "object": "chat.completion",
                    "created": 0,
                    "model": ex.model,
                    "choices": [
                        {
                            "index": 0,
                            "message": {"role": "assistant", "content": "canned"},
                            "finish_reason": "stop",
                        }
                    ],
                },
            )
        if "forbidden" in str(ex.body.get("messages")):
            raise GatewayError(400, "blocked by test-canned", code="request_rejected")
        return None


@register_filter
class Twice(Filter):
    name = "test-twice"
    type = "transform"

    async def handle(self, ex, next):
        await next(ex)
        ex.body["messages"].append({"role": "user", "content": "again"})
        return await next(ex)


@register_filter
class Broken(Filter):
    name = "test-broken"
    type = "transform"

    async def handle(self, ex, next):
        raise RuntimeError("secret internal detail")


@register_filter
class BrokenLogger(Filter):
    name = "test-broken-logger"
    type = "logging"

    async def handle(self, ex, next):
        await next(ex)
        raise RuntimeError("logger bug")


@register_filter
class Recover(Filter):
    name = "test-recover"
    type = "transform"
    default_stages = ("on_error",)

    async def on_error(self, ex, err):
        return Reply(200, data={"recovered_from": err.code})


def _env(fake):
    return {"OPENAI_API_KEY": "k", "OPENAI_BASE_URL": fake.base_url}


def _client(gw):
    return openai.AsyncOpenAI(api_key="x", base_url=gw.proxy_url + "/v1", max_retries=0)


async def test_filter_rewrites_request_and_response(gateway_factory, fake_openai):
    gw = await gateway_factory(
        {"plugins": [{"name": "test-shout", "config": {"suffix": "??"}}]}, env=_env(fake_openai)
    )
    resp = await _client(gw).chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}]
    )
    assert fake_openai.requests[-1].body["messages"][0]["content"] == "hi??"
    assert resp.choices[0].message.content == fake_openai.reply_text.upper()


async def test_filter_transforms_each_streamed_chunk(gateway_factory, fake_openai):
    gw = await gateway_factory({"plugins": [{"name": "test-shout"}]}, env=_env(fake_openai))
    stream = await _client(gw).chat.completions.create(
        model="gpt-4o-mini", stream=True, messages=[{"role": "user", "content": "hi"}]
    )
    assert "".join([c.choices[0].delta.content or "" async for c in stream]) == fake_openai.reply_text.upper()


async def test_filter_answers_without_upstream_and_blocks(gateway_factory, fake_openai):
    gw = await gateway_factory(
        {"plugins": [{"name": "test-canned", "type": "guardrail"}]}, env=_env(fake_openai)
    )
    client = _client(gw)
    resp = await client.chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "canned"}]
    )
    assert resp.choices[0].message.content == "canned"
    with pytest.raises(openai.BadRequestError) as info:
        await client.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "forbidden"}]
        )
    assert info.value.code == "request_rejected"
    assert not fake_openai.requests


async def test_filter_may_call_the_rest_of_the_chain_twice(gateway_factory, fake_openai):
    gw = await gateway_factory({"plugins": [{"name": "test-twice"}]}, env=_env(fake_openai))
    await _client(gw).chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}]
    )
    assert len(fake_openai.requests) == 2
    assert fake_openai.requests[1].body["messages"][-1]["content"] == "again"


async def test_failing_filter_fails_closed_without_leaking(gateway_factory, fake_openai):
    gw = await gateway_factory({"plugins": [{"name": "test-broken"}]}, env=_env(fake_openai))
    async with aiohttp.ClientSession() as s:
        async with s.post(
            gw.proxy_url + "/v1/chat/completions",
            json={"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "x"}]},
        ) as r:
            body = await r.json()
            assert r.status == 500
    assert body["error"]["code"] == "plugin_error" and "secret internal detail" not in str(body)
    assert not fake_openai.requests


async def test_failing_logging_filter_fails_open(gateway_factory, fake_openai):
    gw = await gateway_factory({"plugins": [{"name": "test-broken-logger"}]}, env=_env(fake_openai))
    resp = await _client(gw).chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "x"}]
    )
    assert resp.choices[0].message.content == fake_openai.reply_text
    assert len(fake_openai.requests) == 1, "failing open must not call the upstream twice"


async def test_on_error_stage_sees_upstream_failures(gateway_factory, fake_openai):
    gw = await gateway_factory(
        {"plugins": [{"name": "test-recover", "stage": "on_error"}]}, env=_env(fake_openai)
    )
    fake_openai.script.append({"status": 500})
    async with aiohttp.ClientSession() as s:
        async with s.post(
            gw.proxy_url + "/v1/chat/completions",
            json={"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "x"}]},
        ) as r:
            assert r.status == 200 and (await r.json()) == {"recovered_from": "upstream_error"}


async def test_filter_config_errors_name_the_path(gateway_factory, fake_openai):
    from ferro_proxy.config import ConfigError

    with pytest.raises(ConfigError) as info:
        await gateway_factory(
            {"plugins": [{"name": "test-shout", "config": {"suffix": 3, "nope": 1}}]}, env=_env(fake_openai)
        )
    assert "plugins[0].config.suffix: expected str, got int" in info.value.errors
    assert any(e.startswith("plugins[0].config.nope: unknown field") for e in info.value.errors)


def teardown_module():
    for name in (
        "test-shout",
        "test-canned",
        "test-twice",
        "test-broken",
        "test-broken-logger",
        "test-recover",
    ):
        FILTERS.pop(name, None)
