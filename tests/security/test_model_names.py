"""A client's `model` becomes part of upstream URLs (Gemini, Vertex, Azure, Hugging Face):
names that could leave the provider's base path are refused before any upstream call."""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
import pytest
from aiohttp import web

HOSTILE = [
    "gemini-2.0-flash/../../../v1/evil",
    "gemini-2.0-flash/..%2f..%2fevil",
    "models/./gemini",
    "gemini?key=x",
    "gemini#frag",
    "gemini//x",
    "gemini\\..\\x",
    " gemini",
    "gemini\r\nX-Injected: 1",
    "g" * 300,
]


@pytest.fixture
async def detector() -> AsyncIterator[tuple[str, list[str]]]:
    seen: list[str] = []

    async def record(request: web.Request) -> web.Response:
        seen.append(request.raw_path)
        return web.json_response({"error": {"code": 404, "message": "no", "status": "NOT_FOUND"}}, status=404)

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", record)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    yield f"http://127.0.0.1:{port}/v1beta", seen
    await runner.cleanup()


@pytest.mark.parametrize("route", ["/v1/chat/completions", "/v1/messages"])
async def test_hostile_model_names_never_reach_an_upstream(gateway_factory, detector, route) -> None:
    base_url, seen = detector
    running = await gateway_factory(
        env={"GEMINI_API_KEY": "AIza-test-model-names-0000", "GEMINI_BASE_URL": base_url}
    )
    async with aiohttp.ClientSession() as session:
        for model in HOSTILE:
            body = {"model": model, "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]}
            async with session.post(running.proxy_url + route, json=body) as resp:
                assert resp.status == 400, model
                payload = await resp.json()
            assert "invalid model name" in payload["error"]["message"]
    assert seen == []


async def test_ordinary_model_names_still_reach_the_base_path(gateway_factory, detector) -> None:
    base_url, seen = detector
    running = await gateway_factory(
        env={"GEMINI_API_KEY": "AIza-test-model-names-0000", "GEMINI_BASE_URL": base_url}
    )
    async with aiohttp.ClientSession() as session:
        body = {"model": "gemini-2.0-flash", "messages": [{"role": "user", "content": "hi"}]}
        async with session.post(running.proxy_url + "/v1/chat/completions", json=body) as resp:
            await resp.read()
    assert seen and all(path.startswith("/v1beta/models/gemini-2.0-flash:") for path in seen)
