"""Acceptance: a config change (admin API) while an MCP tool call is running: the request in
flight finishes on the config it started with, tool result included; the next one sees the new
config."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator

import aiohttp
import openai
import pytest

from tests.fakes.mcp_model import ToolModel
from tests.fakes.mcp_servers import ToolServer
from tests.test_admin import BOOT, Admin, admin_env


@pytest.fixture(scope="module")
def server() -> Iterator[ToolServer]:
    srv = ToolServer().start_blocking()
    yield srv
    srv.stop_blocking()


@pytest.fixture
async def model() -> AsyncIterator[ToolModel]:
    fake = await ToolModel(wants=[("slow", {"seconds": 0.6})]).start()
    yield fake
    await fake.stop()


@pytest.mark.parametrize("stream", [False, True])
async def test_removing_the_server_mid_call_lets_the_call_finish(
    gateway_factory, server, model, stream
) -> None:
    server.calls.clear()
    running = await gateway_factory(
        {"mcp_servers": [{"name": server.name, "url": server.url, "timeout_seconds": 5}]},
        env=admin_env(model.base_url),
    )
    client = openai.AsyncOpenAI(api_key="sk-placeholder", base_url=running.proxy_url + "/v1", max_retries=0)
    try:

        async def ask() -> str:
            messages = [{"role": "user", "content": "run the slow tool"}]
            if not stream:
                reply = await client.chat.completions.create(model="gpt-4o-mini", messages=messages)
                return reply.choices[0].message.content or ""
            chunks = await client.chat.completions.create(model="gpt-4o-mini", messages=messages, stream=True)
            return "".join([c.choices[0].delta.content or "" async for c in chunks if c.choices])

        in_flight = asyncio.create_task(ask())
        for _ in range(200):  # wait until the tool is running
            if server.calls:
                break
            await asyncio.sleep(0.01)
        assert server.calls, "the tool never started"
        status, body = await Admin(running.admin_url, BOOT).call(
            "PUT", "/admin/config", {"mcp_servers": None}
        )
        assert status == 200, body
        answer = await in_flight
        assert "finally done" in answer, answer
        assert not answer.startswith("The tools said: error"), answer
        after = await client.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "again"}]
        )
        assert after.choices[0].message.content == "No tools were needed."
        async with aiohttp.ClientSession() as session, session.get(running.admin_url + "/metrics") as resp:
            metrics = await resp.text()
        assert 'ferro_mcp_tool_calls_total{server="tools",status="ok",tool="slow"} 1.0' in metrics
    finally:
        await client.close()
