"""Error mapping, limits, keys and CORS on the OpenAI surface."""

from __future__ import annotations

import asyncio
import logging

import aiohttp
import openai
import pytest

CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}


async def post(url: str, **kw):
    async with aiohttp.ClientSession() as s:
        async with s.post(url, **kw) as r:
            return r.status, dict(r.headers), await r.read()


async def test_bad_json_is_400(gateway):
    status, _, body = await post(
        gateway.proxy_url + "/v1/chat/completions",
        data=b"{not json",
        headers={"Content-Type": "application/json"},
    )
    assert status == 400
    assert b'"code":"invalid_json"' in body and b'"type":"invalid_request_error"' in body


@pytest.mark.parametrize("field", ["model", "messages"])
async def test_missing_field_is_400_naming_it(gateway, field):
    body = dict(CHAT)
    del body[field]
    status, _, raw = await post(gateway.proxy_url + "/v1/chat/completions", json=body)
    assert status == 400
    assert f"'{field}'".encode() in raw and f'"param":"{field}"'.encode() in raw


async def test_unknown_model_is_404_when_no_provider_serves_it(gateway_factory, fake_openai):
    gw = await gateway_factory(
        env={
            "OPENAI_API_KEY": "k",
            "OPENAI_BASE_URL": fake_openai.base_url,
            "GROQ_API_KEY": "k2",
            "GROQ_BASE_URL": fake_openai.base_url,
        }
    )
    client = openai.AsyncOpenAI(api_key="x", base_url=gw.proxy_url + "/v1", max_retries=0)
    with pytest.raises(openai.NotFoundError) as info:
        await client.chat.completions.create(
            model="no-such-model", messages=[{"role": "user", "content": "x"}]
        )
    assert info.value.code == "model_not_found"
    assert not fake_openai.requests, "nothing may reach an upstream for an unroutable model"


async def test_oversized_body_is_413(gateway_factory, fake_openai):
    gw = await gateway_factory(
        {"max_request_bytes": 1000}, env={"OPENAI_API_KEY": "k", "OPENAI_BASE_URL": fake_openai.base_url}
    )
    big = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "x" * 5000}]}
    status, _, body = await post(gw.proxy_url + "/v1/chat/completions", json=big)
    assert status == 413 and b"request_too_large" in body
    assert not fake_openai.requests


@pytest.mark.parametrize(
    ("upstream", "client_status", "code"),
    [
        (401, 502, "upstream_auth_error"),
        (403, 502, "upstream_auth_error"),
        (500, 502, "upstream_error"),
        (503, 502, "upstream_error"),
        (400, 400, "invalid_request_error"),
    ],
)
async def test_upstream_status_mapping(gateway, fake_openai, upstream, client_status, code):
    fake_openai.script.append({"status": upstream, "message": "boom"})
    status, _, body = await post(gateway.proxy_url + "/v1/chat/completions", json=CHAT)
    assert status == client_status
    assert f'"code":"{code}"'.encode() in body
    assert b"sk-test-upstream-key" not in body


async def test_upstream_429_keeps_retry_after(gateway, fake_openai):
    fake_openai.script.append({"status": 429, "retry_after": 7})
    status, headers, body = await post(gateway.proxy_url + "/v1/chat/completions", json=CHAT)
    assert status == 429 and headers["Retry-After"] == "7"
    assert b'"type":"rate_limit_error"' in body


async def test_upstream_timeout_is_504(gateway_factory, fake_openai):
    gw = await gateway_factory(
        {"providers": {"openai": {"api_key": "k", "base_url": fake_openai.base_url, "timeout": "300ms"}}}
    )
    fake_openai.script.append({"stall": 3})
    status, _, body = await post(gw.proxy_url + "/v1/chat/completions", json=CHAT)
    assert status == 504 and b"gateway_timeout" in body


async def test_stream_cut_upstream_ends_with_error_event(gateway, fake_openai):
    fake_openai.script.append({"cut_after": 3})
    async with aiohttp.ClientSession() as s:
        async with s.post(gateway.proxy_url + "/v1/chat/completions", json={**CHAT, "stream": True}) as r:
            assert r.status == 200
            raw = await r.read()
    assert raw.count(b"data: {") >= 2
    assert raw.rstrip().endswith(b"}"), raw[-200:]
    assert b"event: error" in raw and b"upstream_stream_error" in raw
    assert b"[DONE]" not in raw, "a broken stream must never look complete"


async def test_stream_cut_raises_in_sdk(openai_client, fake_openai):
    fake_openai.script.append({"cut_after": 3})
    stream = await openai_client.chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}], stream=True
    )
    with pytest.raises(openai.APIError):
        async for _ in stream:
            pass


async def test_configured_key_replaces_client_placeholder(openai_client, fake_openai):
    await openai_client.chat.completions.create(**CHAT)
    assert fake_openai.requests[-1].headers["Authorization"] == "Bearer sk-test-upstream-key"


async def test_bring_your_own_key_is_forwarded_when_gateway_has_none(gateway_factory, fake_openai):
    gw = await gateway_factory({"providers": {"openai": {"base_url": fake_openai.base_url}}})
    client = openai.AsyncOpenAI(api_key="sk-user-own-key", base_url=gw.proxy_url + "/v1", max_retries=0)
    await client.chat.completions.create(**CHAT)
    assert fake_openai.requests[-1].headers["Authorization"] == "Bearer sk-user-own-key"


async def test_gateway_key_is_never_forwarded(gateway_factory, fake_openai):
    gw = await gateway_factory({"providers": {"openai": {"base_url": fake_openai.base_url}}})
    status, _, body = await post(
        gw.proxy_url + "/v1/chat/completions",
        json=CHAT,
        headers={"Authorization": "Bearer sk-ferro-abcdef123456"},
    )
    # an unknown gateway key is refused; whatever happens, it never travels upstream
    assert status == 401 and b"sk-ferro-abcdef123456" not in body
    assert all("sk-ferro" not in str(r.headers) for r in fake_openai.requests)


async def test_no_secret_in_logs(gateway, fake_openai, caplog):
    caplog.set_level(logging.DEBUG)
    fake_openai.script.append({"status": 401, "message": "Incorrect API key provided: sk-test-upstream-key"})
    status, _, body = await post(
        gateway.proxy_url + "/v1/chat/completions",
        json=CHAT,
        headers={"Authorization": "Bearer sk-client-secret-999"},
    )
    assert status == 502
    from ferro_proxy.jsonlog import JsonFormatter

    fmt = JsonFormatter()
    lines = "\n".join(fmt.format(r) for r in caplog.records)
    assert "request" in lines
    for secret in ("sk-test-upstream-key", "sk-client-secret-999"):
        assert secret not in lines
        assert secret.encode() not in body


async def test_cors_is_closed_by_default(gateway):
    async with aiohttp.ClientSession() as s:
        async with s.options(
            gateway.proxy_url + "/v1/chat/completions",
            headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "POST"},
        ) as r:
            assert r.status == 403 and "Access-Control-Allow-Origin" not in r.headers
        async with s.post(
            gateway.proxy_url + "/v1/chat/completions", json=CHAT, headers={"Origin": "https://evil.example"}
        ) as r:
            assert r.status == 403


async def test_cors_allows_listed_origin_including_streams(gateway_factory, fake_openai):
    gw = await gateway_factory(
        env={
            "OPENAI_API_KEY": "k",
            "OPENAI_BASE_URL": fake_openai.base_url,
            "CORS_ORIGINS": "https://app.example, https://other.example",
        }
    )
    origin = {"Origin": "https://app.example"}
    async with aiohttp.ClientSession() as s:
        async with s.options(
            gw.proxy_url + "/v1/chat/completions",
            headers={
                **origin,
                "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "authorization,content-type",
            },
        ) as r:
            assert r.status == 204
            assert r.headers["Access-Control-Allow-Origin"] == "https://app.example"
        async with s.post(
            gw.proxy_url + "/v1/chat/completions", json={**CHAT, "stream": True}, headers=origin
        ) as r:
            assert r.headers["Access-Control-Allow-Origin"] == "https://app.example"
            await r.read()
        async with s.post(
            gw.proxy_url + "/v1/chat/completions", json=CHAT, headers={"Origin": "https://evil.example"}
        ) as r:
            assert r.status == 403


async def test_client_disconnect_cancels_upstream_stream(gateway, fake_openai):
    fake_openai.script.append({"chunk_delay": 0.3})
    async with aiohttp.ClientSession() as s:
        async with s.post(gateway.proxy_url + "/v1/chat/completions", json={**CHAT, "stream": True}) as r:
            await r.content.readline()
    for _ in range(50):
        if fake_openai.cancelled:
            break
        await asyncio.sleep(0.05)
    assert fake_openai.cancelled == 1


async def test_client_disconnect_cancels_upstream_request(gateway, fake_openai):
    fake_openai.script.append({"stall": 5})
    with pytest.raises(asyncio.TimeoutError):
        async with aiohttp.ClientSession() as s:
            await s.post(
                gateway.proxy_url + "/v1/chat/completions",
                json=CHAT,
                timeout=aiohttp.ClientTimeout(total=0.3),
            )
    for _ in range(50):
        if fake_openai.cancelled:
            break
        await asyncio.sleep(0.05)
    assert fake_openai.cancelled == 1
