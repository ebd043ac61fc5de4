"""Acceptance: the MCP tool loop for anthropic SDK clients on `/v1/messages`.

The model is either an OpenAI-compatible upstream (translated path) or Anthropic itself (the
native path). Either way the gateway must run the MCP tool and hand the client only the final
answer, never a `tool_use` of a tool the client does not know.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import aiohttp
import anthropic
import pytest

from tests.fakes.anthropic_upstream import FakeAnthropic
from tests.fakes.mcp_model import ToolModel
from tests.fakes.mcp_servers import ToolServer

HI = [{"role": "user", "content": "Weather in Paris?"}]


@pytest.fixture(scope="module")
def server() -> Iterator[ToolServer]:
    srv = ToolServer().start_blocking()
    yield srv
    srv.stop_blocking()


@pytest.fixture
async def openai_model() -> AsyncIterator[ToolModel]:
    fake = await ToolModel(wants=[("get_weather", {"city": "Paris"})]).start()
    yield fake
    await fake.stop()


@pytest.fixture
async def claude_model() -> AsyncIterator[FakeAnthropic]:
    fake = await FakeAnthropic(tool_use={"name": "get_weather", "input": {"city": "Paris"}}).start()
    yield fake
    await fake.stop()


@pytest.fixture
async def running(gateway_factory, server: ToolServer, openai_model: ToolModel, claude_model: FakeAnthropic):
    env = {
        "OPENAI_API_KEY": "sk-up",
        "OPENAI_BASE_URL": openai_model.base_url,
        "ANTHROPIC_API_KEY": claude_model.api_key,
        "ANTHROPIC_BASE_URL": claude_model.host_url,
    }
    return await gateway_factory({"mcp_servers": [{"name": server.name, "url": server.url}]}, env=env)


@pytest.fixture
async def claude(running) -> AsyncIterator[anthropic.AsyncAnthropic]:
    sdk = anthropic.AsyncAnthropic(api_key="sk-placeholder", base_url=running.proxy_url, max_retries=0)
    yield sdk
    await sdk.close()


async def test_translated_model_runs_the_tool(claude, server: ToolServer, openai_model: ToolModel) -> None:
    server.calls.clear()
    message = await claude.messages.create(model="gpt-4o-mini", max_tokens=256, messages=HI)
    assert [b.type for b in message.content] == ["text"]
    assert "Sunny and 21 C in Paris" in message.content[0].text
    assert message.stop_reason == "end_turn"
    assert server.calls == [("get_weather", {"city": "Paris"})]


async def test_translated_model_streams_the_final_answer(claude, server: ToolServer) -> None:
    server.calls.clear()
    async with claude.messages.stream(model="gpt-4o-mini", max_tokens=256, messages=HI) as stream:
        text = "".join([t async for t in stream.text_stream])
        final = await stream.get_final_message()
    assert "Sunny and 21 C in Paris" in text
    assert all(b.type == "text" for b in final.content)
    assert server.calls == [("get_weather", {"city": "Paris"})]


async def test_anthropic_model_runs_the_tool(claude, running, server: ToolServer, claude_model) -> None:
    server.calls.clear()
    message = await claude.messages.create(model="claude-sonnet-4-20250514", max_tokens=256, messages=HI)
    assert [b.type for b in message.content] == ["text"], message.content
    assert message.stop_reason == "end_turn"
    assert server.calls == [("get_weather", {"city": "Paris"})]
    second = claude_model.requests[-1].body
    result = second["messages"][-1]["content"][0]
    assert result["type"] == "tool_result" and "Sunny and 21 C in Paris" in str(result["content"])
    async with aiohttp.ClientSession() as session, session.get(running.admin_url + "/metrics") as resp:
        metrics = await resp.text()
    assert 'ferro_mcp_tool_calls_total{server="tools",status="ok",tool="get_weather"} 1.0' in metrics


async def test_anthropic_model_streams_after_the_tool(claude, server: ToolServer) -> None:
    server.calls.clear()
    async with claude.messages.stream(
        model="claude-sonnet-4-20250514", max_tokens=256, messages=HI
    ) as stream:
        final = await stream.get_final_message()
    assert [b.type for b in final.content] == ["text"], final.content
    assert server.calls == [("get_weather", {"city": "Paris"})]


async def test_anthropic_model_without_mcp_tools_stays_native(claude, claude_model) -> None:
    """Nothing to add (tool_choice none): the client's body still travels untouched."""
    await claude.messages.create(
        model="claude-sonnet-4-20250514",
        max_tokens=256,
        extra_body={"top_k": 5},
        tool_choice={"type": "none"},
        tools=[{"name": "mine", "input_schema": {"type": "object"}}],
        messages=HI,
    )
    assert claude_model.requests[-1].body["top_k"] == 5
