"""Every OpenAI-compatible provider: enabled by its env vars, addressed as provider/model,
called with its own key at its own base URL; Azure OpenAI with deployment URLs and api-key."""

from __future__ import annotations

import openai
import pytest
from aiohttp import web

PROVIDERS_COVERED = {
    "openai",
    "deepseek",
    "fireworks",
    "groq",
    "mistral",
    "perplexity",
    "together",
    "xai",
    "ollama",
    "azure-openai",
}

FAMILY = ["deepseek", "fireworks", "groq", "mistral", "perplexity", "together", "xai"]


@pytest.mark.parametrize("name", FAMILY)
async def test_family_member_chat_and_stream(gateway_factory, fake_openai, name):
    env_name = name.upper()
    gw = await gateway_factory(
        env={f"{env_name}_API_KEY": f"key-{name}", f"{env_name}_BASE_URL": fake_openai.base_url}
    )
    client = openai.AsyncOpenAI(api_key="placeholder", base_url=gw.proxy_url + "/v1", max_retries=0)
    resp = await client.chat.completions.create(
        model=f"{name}/some-model", messages=[{"role": "user", "content": "q"}]
    )
    assert resp.choices[0].message.content == fake_openai.reply_text
    sent = fake_openai.requests[-1]
    assert sent.headers["Authorization"] == f"Bearer key-{name}"
    assert sent.body["model"] == "some-model", "the provider prefix is stripped before the call"
    stream = await client.chat.completions.create(
        model=f"{name}/some-model", messages=[{"role": "user", "content": "q"}], stream=True
    )
    assert "".join([c.choices[0].delta.content or "" async for c in stream]) == fake_openai.reply_text


async def test_ollama_bare_host_gets_v1_and_no_auth(gateway_factory, fake_openai):
    gw = await gateway_factory(env={"OLLAMA_HOST": f"http://127.0.0.1:{fake_openai.port}"})
    client = openai.AsyncOpenAI(api_key="ollama", base_url=gw.proxy_url + "/v1", max_retries=0)
    resp = await client.chat.completions.create(model="llama3.2", messages=[{"role": "user", "content": "q"}])
    assert resp.choices[0].message.content == fake_openai.reply_text
    sent = fake_openai.requests[-1]
    assert sent.path == "/v1/chat/completions"
    assert sent.headers.get("Authorization") == "Bearer ollama", (
        "with no gateway key the client's own is forwarded"
    )


async def test_provider_model_routing_picks_by_prefix(gateway_factory):
    from tests.fakes.openai_upstream import FakeOpenAI

    a = await FakeOpenAI(reply_text="from openai").start()
    b = await FakeOpenAI(reply_text="from mistral").start()
    try:
        gw = await gateway_factory(
            env={
                "OPENAI_API_KEY": "k1",
                "OPENAI_BASE_URL": a.base_url,
                "MISTRAL_API_KEY": "k2",
                "MISTRAL_BASE_URL": b.base_url,
            }
        )
        client = openai.AsyncOpenAI(api_key="x", base_url=gw.proxy_url + "/v1", max_retries=0)
        r1 = await client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "q"}])
        r2 = await client.chat.completions.create(
            model="mistral-large-latest", messages=[{"role": "user", "content": "q"}]
        )
        assert (r1.choices[0].message.content, r2.choices[0].message.content) == (
            "from openai",
            "from mistral",
        )
    finally:
        await a.stop()
        await b.stop()


async def test_azure_openai_deployment_url_and_api_key(gateway_factory):
    seen: list[web.Request] = []
    bodies: list[dict] = []

    async def chat(request: web.Request) -> web.Response:
        seen.append(request)
        bodies.append(await request.json())
        if request.headers.get("api-key") != "azure-key":
            return web.json_response({"error": {"code": "401", "message": "Access denied"}}, status=401)
        return web.json_response(
            {
                "id": "chatcmpl-az",
                "object": "chat.completion",
                "created": 1,
                "model": "gpt-4o",
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": "from azure"},
                        "finish_reason": "stop",
                    }
                ],
                "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5},
            }
        )

    app = web.Application()
    app.router.add_post("/openai/deployments/{deployment}/chat/completions", chat)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        gw = await gateway_factory(
            env={
                "AZURE_OPENAI_API_KEY": "azure-key",
                "AZURE_OPENAI_ENDPOINT": f"http://127.0.0.1:{port}",
                "AZURE_OPENAI_DEPLOYMENT": "prod-gpt4o",
                "AZURE_OPENAI_API_VERSION": "2024-10-21",
            }
        )
        client = openai.AsyncOpenAI(api_key="x", base_url=gw.proxy_url + "/v1", max_retries=0)
        resp = await client.chat.completions.create(
            model="gpt-4o", messages=[{"role": "user", "content": "q"}]
        )
        assert resp.choices[0].message.content == "from azure"
        req = seen[-1]
        assert req.path == "/openai/deployments/prod-gpt4o/chat/completions"
        assert req.query["api-version"] == "2024-10-21"
        assert "Authorization" not in req.headers
    finally:
        await runner.cleanup()
