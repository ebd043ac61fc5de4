"""The MCP Streamable HTTP client against real MCP servers built with the official SDK."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import aiohttp
import pytest

from ferro_proxy.mcp.client import McpClient, McpRpcError, McpTransportError
from tests.fakes.mcp_servers import PagedToolServer, ToolServer, eventually, free_port

MODES = {
    "sse": {},
    "json": {"json_response": True},
    "stateless": {"json_response": True, "stateless": True},
}


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


@pytest.fixture(params=list(MODES))
async def server(request: pytest.FixtureRequest) -> AsyncIterator[ToolServer]:
    srv = await ToolServer(**MODES[request.param]).start()
    yield srv
    await srv.stop()


async def test_initialize_list_and_call(server: ToolServer, http: aiohttp.ClientSession) -> None:
    client = McpClient("tools", server.url, {"Authorization": "Bearer tool-token"}, http)
    await client.initialize()
    assert client.protocol_version == "2025-11-25"
    names = [t["name"] for t in await client.list_tools()]
    assert {"get_weather", "search", "slow"} <= set(names)
    result = await client.call_tool("get_weather", {"city": "Oslo"})
    assert result["content"][0]["text"] == "Sunny and 21 C in Oslo"
    assert server.calls[-1] == ("get_weather", {"city": "Oslo"})

    posts = server.methods("POST")
    assert all(p.headers["accept"] == "application/json, text/event-stream" for p in posts)
    assert all(p.headers["authorization"] == "Bearer tool-token" for p in posts)
    assert "mcp-protocol-version" not in posts[0].headers  # not before it is negotiated
    assert all(p.headers["mcp-protocol-version"] == "2025-11-25" for p in posts[1:])
    if not server.stateless:
        assert client.session_id and all(p.headers["mcp-session-id"] == client.session_id for p in posts[1:])

    await client.close()
    if server.stateless:
        assert not server.methods("DELETE")
    else:
        assert server.methods("DELETE")[-1].headers["mcp-session-id"] == posts[-1].headers["mcp-session-id"]


async def test_tool_errors_are_results_and_timeouts_cancel(
    server: ToolServer, http: aiohttp.ClientSession
) -> None:
    client = McpClient("tools", server.url, {}, http)
    await client.initialize()
    failed = await client.call_tool("broken", {})
    assert failed["isError"] is True and "backend of broken is down" in failed["content"][0]["text"]
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.3):
            await client.call_tool("slow", {"seconds": 5})
    # the session is still usable after a call was abandoned
    assert (await client.call_tool("search", {"query": "mcp"}))["content"][0][
        "text"
    ] == "3 documents mention mcp"
    await client.close()


async def test_restarted_server_gets_a_new_session(http: aiohttp.ClientSession) -> None:
    server = await ToolServer().start()
    reinitialized: list[bool] = []
    client = McpClient("tools", server.url, {}, http, on_reinitialized=lambda: reinitialized.append(True))
    try:
        await client.initialize()
        old_session = client.session_id
        await server.restart()  # same port, every session forgotten
        result = await client.call_tool("get_weather", {"city": "Rome"})
        assert result["content"][0]["text"] == "Sunny and 21 C in Rome"
        assert client.session_id and client.session_id != old_session
        assert reinitialized == [True]
        rejected = [p for p in server.methods("POST") if p.headers.get("mcp-session-id") == old_session]
        assert rejected, "the call was first tried in the old session (and answered 404)"
    finally:
        await client.close()
        await server.stop()


async def test_list_changed_arrives_on_the_get_stream(http: aiohttp.ClientSession) -> None:
    server = await ToolServer().start()
    seen: list[str] = []
    changed = asyncio.Event()

    def on_notification(method: str, params: dict) -> None:
        seen.append(method)
        changed.set()

    client = McpClient("tools", server.url, {}, http, on_notification=on_notification)
    try:
        await client.initialize()
        listener = asyncio.create_task(client.listen())
        await eventually(lambda: server.methods("GET"), what="the GET stream")
        await client.call_tool("add_stock_tool", {})
        async with asyncio.timeout(5):
            await changed.wait()
        assert seen == ["notifications/tools/list_changed"]
        assert "stock_price" in [t["name"] for t in await client.list_tools()]
        listener.cancel()
    finally:
        await client.close()
        await server.stop()


async def test_paginated_tools_list(http: aiohttp.ClientSession) -> None:
    server = await PagedToolServer(json_response=True).start()
    client = McpClient("pager", server.url, {}, http)
    try:
        await client.initialize()
        assert [t["name"] for t in await client.list_tools()] == [f"tool_{i}" for i in range(5)]
        assert len(server.methods("POST")) == 2 + 3  # initialize, initialized, three pages
        assert (await client.call_tool("tool_3", {}))["content"][0]["text"] == "tool_3 ran"
    finally:
        await client.close()
        await server.stop()


async def test_stream_closed_before_the_answer_is_resumed(http: aiohttp.ClientSession) -> None:
    server = await ToolServer(resumable=True).start()
    client = McpClient("tools", server.url, {}, http)
    try:
        await client.initialize()
        async with asyncio.timeout(10):
            result = await client.call_tool("hang_up", {})
        assert result["content"][0]["text"] == "answered after the hang-up"
        resumes = [g for g in server.methods("GET") if "last-event-id" in g.headers]
        assert resumes, "the answer came on a GET that resumed the stream"
    finally:
        await client.close()
        await server.stop()


async def test_unknown_method_is_a_json_rpc_error(server: ToolServer, http: aiohttp.ClientSession) -> None:
    client = McpClient("tools", server.url, {}, http)
    await client.initialize()
    with pytest.raises(McpRpcError) as err:
        await client.request("no/such_method", {})
    assert err.value.code == -32601
    await client.close()


async def test_unreachable_server(http: aiohttp.ClientSession) -> None:
    client = McpClient(
        "gone", f"http://127.0.0.1:{free_port()}/mcp", {"Authorization": "Bearer s3cret-token"}, http
    )
    with pytest.raises(McpTransportError) as err:
        await client.initialize()
    assert "could not be reached" in str(err.value) and "s3cret" not in str(err.value)
