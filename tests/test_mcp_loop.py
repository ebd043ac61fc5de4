"""The MCP tool loop end to end: the official OpenAI SDK → gateway → fake model, with the
tools served by real MCP servers built with the official MCP SDK."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from typing import Any

import aiohttp
import openai
import pytest

from ferro_proxy.server import Running
from tests.fakes.mcp_model import ToolModel
from tests.fakes.mcp_servers import ToolServer

MODES = {
    "sse": {},
    "json": {"json_response": True},
    "stateless": {"json_response": True, "stateless": True},
}
USER = [{"role": "user", "content": "What is the weather in Paris?"}]


@pytest.fixture
async def model() -> AsyncIterator[ToolModel]:
    fake = await ToolModel().start()
    yield fake
    await fake.stop()


@pytest.fixture(scope="module")
def shared_server() -> Iterator[ToolServer]:
    srv = ToolServer().start_blocking()
    yield srv
    srv.stop_blocking()


@pytest.fixture
def server(shared_server: ToolServer) -> ToolServer:
    """The module's MCP server, with a clean record of calls."""
    shared_server.calls.clear()
    shared_server.requests.clear()
    return shared_server


def mcp_entry(server: ToolServer, **kw: Any) -> dict[str, Any]:
    return {"name": server.name, "url": server.url, **kw}


async def start_gateway(gateway_factory: Any, model: ToolModel, *servers: dict[str, Any]) -> Running:
    env = {"OPENAI_API_KEY": "sk-test-upstream-key", "OPENAI_BASE_URL": model.base_url}
    return await gateway_factory({"mcp_servers": list(servers)}, env=env)


@pytest.fixture
async def sdk() -> AsyncIterator[Any]:
    """Official OpenAI SDK clients for a running gateway, closed after the test."""
    clients: list[openai.AsyncOpenAI] = []

    def make(running: Running) -> openai.AsyncOpenAI:
        client = openai.AsyncOpenAI(
            api_key="sk-placeholder", base_url=running.proxy_url + "/v1", max_retries=0
        )
        clients.append(client)
        return client

    yield make
    for client in clients:
        await client.close()


async def metrics_text(running: Running) -> str:
    async with aiohttp.ClientSession() as http, http.get(running.admin_url + "/metrics") as resp:
        return await resp.text()


@pytest.mark.parametrize("mode", list(MODES))
async def test_answer_uses_the_tool_and_allowed_tools_hides_the_rest(
    sdk, gateway_factory, model, mode
) -> None:
    server = await ToolServer(**MODES[mode]).start()
    try:
        model.wants = [("get_weather", {"city": "Paris"})]
        running = await start_gateway(
            gateway_factory, model, mcp_entry(server, allowed_tools=["get_weather", "search"])
        )
        resp = await sdk(running).chat.completions.create(model="gpt-4o-mini", messages=USER)

        assert resp.choices[0].message.content == "The tools said: Sunny and 21 C in Paris"
        assert resp.choices[0].finish_reason == "stop"
        assert (resp.usage.prompt_tokens, resp.usage.completion_tokens) == (20, 10)  # both turns
        assert server.calls == [("get_weather", {"city": "Paris"})]
        assert len(model.bodies) == 2
        assert sorted(model.offered(0)) == ["get_weather", "search"]  # no delete_everything, slow ...
        assistant, tool = model.bodies[1]["messages"][-2:]
        assert assistant["role"] == "assistant"
        assert assistant["tool_calls"][0]["function"] == {
            "name": "get_weather",
            "arguments": '{"city":"Paris"}',
        }
        assert tool == {"role": "tool", "tool_call_id": "call_0_0", "content": "Sunny and 21 C in Paris"}
        text = await metrics_text(running)
        assert 'ferro_mcp_tool_calls_total{server="tools",status="ok",tool="get_weather"} 1.0' in text
        assert 'ferro_mcp_tool_call_duration_seconds_count{server="tools",tool="get_weather"} 1.0' in text
    finally:
        await server.stop()


async def test_streamed_final_answer_arrives_chunk_by_chunk(sdk, gateway_factory, model, server) -> None:
    model.wants = [("get_weather", {"city": "Paris"})]
    model.gate = asyncio.Event()  # the model holds its answer after the first word until we saw it
    running = await start_gateway(gateway_factory, model, mcp_entry(server))
    stream = await sdk(running).chat.completions.create(
        model="gpt-4o-mini", messages=USER, stream=True, stream_options={"include_usage": True}
    )
    pieces: list[str] = []
    finish = usage = None
    async with asyncio.timeout(10):  # a gateway that buffers the answer never shows the first word
        async for chunk in stream:
            if chunk.usage is not None:
                usage = chunk.usage
            if not chunk.choices:
                continue
            assert not chunk.choices[0].delta.tool_calls, "MCP tool calls are not the client's business"
            if chunk.choices[0].delta.content:
                pieces.append(chunk.choices[0].delta.content)
                model.gate.set()
            finish = chunk.choices[0].finish_reason or finish
    assert "".join(pieces) == "The tools said: Sunny and 21 C in Paris"
    assert len(pieces) > 3
    assert finish == "stop"
    assert usage is not None and (usage.prompt_tokens, usage.completion_tokens) == (20, 10)
    assert all(body["stream"] for body in model.bodies) and len(model.bodies) == 2


async def test_stream_keeps_the_connection_alive_while_tools_run(gateway_factory, model, server) -> None:
    model.wants = [("get_weather", {"city": "Oslo"})]
    model.preamble = "Let me look that up."
    running = await start_gateway(gateway_factory, model, mcp_entry(server))
    body = {"model": "gpt-4o-mini", "messages": USER, "stream": True}
    async with aiohttp.ClientSession() as http:
        async with http.post(running.proxy_url + "/v1/chat/completions", json=body) as resp:
            assert resp.status == 200
            raw = await resp.read()
    assert b": mcp: calling get_weather\n\n" in raw
    assert b"get_weather" not in raw.replace(b": mcp: calling get_weather", b"")
    assert raw.count(b"data: [DONE]") == 1 and raw.endswith(b"data: [DONE]\n\n")
    assert b'"content":"Let"' in raw  # the tool turn's own words were streamed too
    assert b'"content":" Oslo"' in raw  # the final answer quotes the tool result


async def test_parallel_calls_of_one_turn(sdk, gateway_factory, model, server) -> None:
    model.wants = [("meet", {"who": "ann"}), ("meet", {"who": "bob"})]
    running = await start_gateway(gateway_factory, model, mcp_entry(server))
    resp = await sdk(running).chat.completions.create(model="gpt-4o-mini", messages=USER)
    assert resp.choices[0].message.content == (
        "The tools said: ann met the other caller | bob met the other caller"
    )
    tools = [m for m in model.bodies[1]["messages"] if m["role"] == "tool"]
    assert [m["tool_call_id"] for m in tools] == ["call_0_0", "call_0_1"]


async def test_slow_tool_times_out_into_an_error_message(sdk, gateway_factory, model, server) -> None:
    model.wants = [("slow", {"seconds": 5})]
    running = await start_gateway(gateway_factory, model, mcp_entry(server, timeout_seconds=0.5))
    resp = await sdk(running).chat.completions.create(model="gpt-4o-mini", messages=USER)
    assert resp.choices[0].message.content == (
        "The tools said: error: tool 'slow' on MCP server 'tools' did not answer within 0.5 s"
    )
    assert (
        'ferro_mcp_tool_calls_total{server="tools",status="timeout",tool="slow"} 1.0'
        in await metrics_text(running)
    )


async def test_failing_tool_becomes_an_error_message(sdk, gateway_factory, model, server) -> None:
    model.wants = [("broken", {})]
    running = await start_gateway(gateway_factory, model, mcp_entry(server))
    resp = await sdk(running).chat.completions.create(model="gpt-4o-mini", messages=USER)
    content = resp.choices[0].message.content
    assert content.startswith("The tools said: error: ") and "the backend of broken is down" in content
    assert 'status="error",tool="broken"} 1.0' in await metrics_text(running)


@pytest.mark.parametrize("stream", [False, True])
async def test_callers_own_tool_calls_come_back_untouched(
    sdk, gateway_factory, model, server, stream
) -> None:
    own = {
        "type": "function",
        "function": {
            "name": "lookup_order",
            "parameters": {"type": "object", "properties": {"id": {"type": "integer"}}},
        },
    }
    model.wants = [("lookup_order", {"id": 7})]
    running = await start_gateway(gateway_factory, model, mcp_entry(server, allowed_tools=["search"]))
    client = sdk(running)
    if stream:
        calls: dict[int, dict[str, str]] = {}
        finish = None
        async for chunk in await client.chat.completions.create(
            model="gpt-4o-mini", messages=USER, tools=[own], stream=True
        ):
            for d in chunk.choices[0].delta.tool_calls or [] if chunk.choices else []:
                call = calls.setdefault(d.index, {"id": "", "name": "", "arguments": ""})
                call["id"] += d.id or ""
                call["name"] += (d.function.name or "") if d.function else ""
                call["arguments"] += (d.function.arguments or "") if d.function else ""
            if chunk.choices and chunk.choices[0].finish_reason:
                finish = chunk.choices[0].finish_reason
        assert calls == {0: {"id": "call_0_0", "name": "lookup_order", "arguments": '{"id":7}'}}
    else:
        resp = await client.chat.completions.create(model="gpt-4o-mini", messages=USER, tools=[own])
        finish = resp.choices[0].finish_reason
        (call,) = resp.choices[0].message.tool_calls
        assert (call.id, call.function.name, call.function.arguments) == (
            "call_0_0",
            "lookup_order",
            '{"id":7}',
        )
    assert finish == "tool_calls"
    assert model.offered(0) == ["lookup_order", "search"]
    assert len(model.bodies) == 1 and server.calls == []


async def test_a_callers_tool_of_the_same_name_wins(sdk, gateway_factory, model, server) -> None:
    own = {"type": "function", "function": {"name": "search", "description": "the caller's search"}}
    model.wants = [("search", {"query": "x"})]
    running = await start_gateway(
        gateway_factory, model, mcp_entry(server, allowed_tools=["search", "get_weather"])
    )
    resp = await sdk(running).chat.completions.create(model="gpt-4o-mini", messages=USER, tools=[own])
    assert resp.choices[0].message.tool_calls[0].function.name == "search"
    tools = model.bodies[0]["tools"]
    assert [t["function"]["name"] for t in tools] == ["search", "get_weather"]
    assert tools[0]["function"]["description"] == "the caller's search"
    assert server.calls == []


@pytest.mark.parametrize("stream", [False, True])
async def test_depth_limit_ends_with_length(sdk, gateway_factory, model, server, stream, caplog) -> None:
    model.wants = [("search", {"query": "again"})]
    model.repeat = True  # the model never stops asking
    running = await start_gateway(gateway_factory, model, mcp_entry(server, max_call_depth=2))
    client = sdk(running)
    if stream:
        finish = None
        async for chunk in await client.chat.completions.create(
            model="gpt-4o-mini", messages=USER, stream=True
        ):
            if chunk.choices and chunk.choices[0].finish_reason:
                finish = chunk.choices[0].finish_reason
            assert not (chunk.choices and chunk.choices[0].delta.tool_calls)
    else:
        resp = await client.chat.completions.create(model="gpt-4o-mini", messages=USER)
        finish = resp.choices[0].finish_reason
        assert not resp.choices[0].message.tool_calls
        assert resp.usage.prompt_tokens == 30  # three turns
    assert finish == "length"
    assert len(model.bodies) == 3 and len(server.calls) == 2
    assert any("max_call_depth" in r.getMessage() for r in caplog.records)


async def test_request_log_notes_each_call(sdk, gateway_factory, model, server, caplog) -> None:
    model.wants = [("get_weather", {"city": "Paris"}), ("search", {"query": "rain"})]
    running = await start_gateway(gateway_factory, model, mcp_entry(server))
    caplog.set_level("INFO", logger="ferro_proxy.mcp")
    await sdk(running).chat.completions.create(
        model="gpt-4o-mini", messages=USER, extra_headers={"X-Request-ID": "req-mcp-1"}
    )
    noted = [r.fields for r in caplog.records if r.getMessage() == "mcp tool call"]
    assert sorted((f["tool"], f["status"], f["request_id"]) for f in noted) == [
        ("get_weather", "ok", "req-mcp-1"),
        ("search", "ok", "req-mcp-1"),
    ]


async def test_cost_is_summed_over_tool_turns(sdk, gateway_factory, model, server) -> None:
    running = await start_gateway(gateway_factory, model, mcp_entry(server))
    client = sdk(running)
    plain = await client.chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=USER)
    assert plain.parse().choices[0].message.content == "No tools were needed."
    model.wants = [("get_weather", {"city": "Paris"})]
    looped = await client.chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=USER)
    assert looped.parse().choices[0].message.content == "The tools said: Sunny and 21 C in Paris"
    one_turn = float(plain.headers["x-ferro-cost-usd"])
    assert one_turn > 0
    assert float(looped.headers["x-ferro-cost-usd"]) == pytest.approx(2 * one_turn)


async def test_every_tool_turn_goes_through_the_guardrails_by_default(
    sdk, gateway_factory, model, server
) -> None:
    """With `mcp_servers:` and no `mcp` in `plugins:`, the loop runs first, so a guardrail listed
    in `plugins:` screens each turn: here it redacts the tool result before the model sees it."""
    model.wants = [("get_weather", {"city": "Paris"})]
    env = {"OPENAI_API_KEY": "sk-test-upstream-key", "OPENAI_BASE_URL": model.base_url}
    rules = [{"name": "weather", "pattern": "Sunny", "action": "redact", "replacement": "[SKY]"}]
    running = await gateway_factory(
        {
            "mcp_servers": [mcp_entry(server)],
            "plugins": [{"name": "regex-guard", "config": {"apply_to": "input", "rules": rules}}],
        },
        env=env,
    )
    resp = await sdk(running).chat.completions.create(model="gpt-4o-mini", messages=USER)
    assert len(model.bodies) == 2
    assert model.bodies[1]["messages"][-1]["content"] == "[SKY] and 21 C in Paris"
    assert resp.choices[0].message.content == "The tools said: [SKY] and 21 C in Paris"
