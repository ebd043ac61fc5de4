"""Real MCP servers for tests, built with the official MCP Python SDK (`mcp` package).

`ToolServer` runs the SDK's Streamable HTTP app under uvicorn on a loopback port in a
thread of its own (so a slow tool never stalls the test's event loop). Modes:
`json_response=True` answers each POST with one JSON body, otherwise with an SSE stream;
`stateless=True` keeps no sessions; `resumable=True` adds an event store, so SSE answers start
with a priming event and the `hang_up` tool closes its stream before answering (the client
must resume with GET + Last-Event-ID). `PagedToolServer` is a low-level SDK server whose
`tools/list` comes in pages. `restart()` brings up a fresh server on the same port,
which forgets every session, as a real redeploy does. Every HTTP request the server gets is
recorded in `requests` (method and headers), every tool call in `calls`.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import mcp_types as types
import uvicorn
from mcp.server.lowlevel import Server
from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp.server.streamable_http import EventCallback, EventMessage, EventStore

WEATHER = "Sunny and 21 C in {city}"


@dataclass
class SeenRequest:
    method: str
    headers: dict[str, str]


@dataclass
class ToolServer:
    name: str = "tools"
    json_response: bool = False
    stateless: bool = False
    resumable: bool = False
    port: int = 0
    requests: list[SeenRequest] = field(default_factory=list)
    calls: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    _server: uvicorn.Server | None = None
    _thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/mcp"

    def build(self) -> Any:
        server = MCPServer(self.name)
        calls = self.calls

        @server.tool()
        def get_weather(city: str) -> str:
            """Current weather for a city."""
            calls.append(("get_weather", {"city": city}))
            return WEATHER.format(city=city)

        @server.tool()
        def search(query: str) -> str:
            """Search the knowledge base."""
            calls.append(("search", {"query": query}))
            return f"3 documents mention {query}"

        @server.tool()
        def delete_everything() -> str:
            """A dangerous tool that allowed_tools must hide."""
            calls.append(("delete_everything", {}))
            return "deleted"

        @server.tool()
        async def slow(seconds: float) -> str:
            """Takes its time."""
            calls.append(("slow", {"seconds": seconds}))
            await asyncio.sleep(seconds)
            return "finally done"

        @server.tool()
        def broken() -> str:
            """Always fails."""
            calls.append(("broken", {}))
            raise ToolError("the backend of broken is down")

        @server.tool()
        async def add_stock_tool(ctx: Context) -> str:
            """Adds a `stock_price` tool and tells clients the list changed."""
            calls.append(("add_stock_tool", {}))

            def stock_price(symbol: str) -> str:
                """Price of a stock."""
                return f"{symbol}: 42.00"

            server.add_tool(stock_price, name="stock_price")
            await ctx.session.send_tool_list_changed()
            return "added"

        arrivals: list[str] = []
        everyone_here = asyncio.Event()

        @server.tool()
        async def meet(who: str) -> str:
            """Waits (up to 5 s) for a second caller: only calls made in parallel meet."""
            calls.append(("meet", {"who": who}))
            arrivals.append(who)
            if len(arrivals) >= 2:
                everyone_here.set()
            try:
                async with asyncio.timeout(5):
                    await everyone_here.wait()
            except TimeoutError:
                return f"{who} waited alone"
            return f"{who} met the other caller"

        @server.tool()
        async def hang_up(ctx: Context) -> str:
            """Closes its answer stream first; the result comes on the resumed stream."""
            calls.append(("hang_up", {}))
            # Let the priming event (the id to resume from) reach the client before hanging up;
            # closing at once races it, and a stream closed with no id cannot be resumed.
            await asyncio.sleep(0.1)
            await ctx.close_sse_stream()
            await asyncio.sleep(0.2)
            return "answered after the hang-up"

        return server

    def _app(self) -> Any:
        extra: dict[str, Any] = {}
        if self.resumable:
            extra = {"event_store": MemoryEventStore(), "retry_interval": 50}
        app = self.build().streamable_http_app(
            json_response=self.json_response, stateless_http=self.stateless, **extra
        )
        seen = self.requests

        async def recording(scope: dict[str, Any], receive: Any, send: Any) -> None:
            if scope["type"] == "http":
                headers = {k.decode().lower(): v.decode() for k, v in scope["headers"]}
                seen.append(SeenRequest(scope["method"], headers))
            await app(scope, receive, send)

        return recording

    async def start(self) -> ToolServer:
        return await asyncio.get_running_loop().run_in_executor(None, self.start_blocking)

    def start_blocking(self) -> ToolServer:
        """Start from synchronous code (e.g. a module-scoped fixture)."""
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", self.port))
        self.port = sock.getsockname()[1]
        config = uvicorn.Config(
            self._app(), log_level="warning", lifespan="on", timeout_graceful_shutdown=0.2, access_log=False
        )
        server = uvicorn.Server(config)
        self._server = server
        self._thread = threading.Thread(target=lambda: server.run(sockets=[sock]), daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 10
        while not server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError("the MCP test server did not start")
            time.sleep(0.01)
        return self

    async def stop(self) -> None:
        await asyncio.get_running_loop().run_in_executor(None, self.stop_blocking)

    def stop_blocking(self) -> None:
        server, thread = self._server, self._thread
        if server is None or thread is None:
            return
        server.should_exit = True
        thread.join(10)
        self._server = self._thread = None

    async def restart(self) -> None:
        await self.stop()
        await self.start()

    def methods(self, method: str) -> list[SeenRequest]:
        return [r for r in self.requests if r.method == method]


class PagedToolServer(ToolServer):
    """A low-level SDK server listing `count` tools, `page_size` per tools/list page."""

    count: int = 5
    page_size: int = 2

    def build(self) -> Any:
        names = [f"tool_{i}" for i in range(self.count)]
        size = self.page_size
        calls = self.calls

        async def list_tools(ctx: Any, params: types.PaginatedRequestParams | None) -> types.ListToolsResult:
            start = int(params.cursor) if params is not None and params.cursor else 0
            page = names[start : start + size]
            more = start + size < len(names)
            return types.ListToolsResult(
                tools=[
                    types.Tool(name=n, description=f"Tool number {n[5:]}", input_schema={"type": "object"})
                    for n in page
                ],
                next_cursor=str(start + size) if more else None,
            )

        async def call_tool(ctx: Any, params: types.CallToolRequestParams) -> types.CallToolResult:
            calls.append((params.name, params.arguments or {}))
            return types.CallToolResult(content=[types.TextContent(type="text", text=f"{params.name} ran")])

        return Server(self.name, on_list_tools=list_tools, on_call_tool=call_tool)


class MemoryEventStore(EventStore):
    """Keeps every SSE event so a client can resume a stream with Last-Event-ID."""

    def __init__(self) -> None:
        self.events: list[tuple[str, str, Any]] = []  # (event id, stream id, message)

    async def store_event(self, stream_id: str, message: Any) -> str:
        event_id = str(len(self.events) + 1)
        self.events.append((event_id, stream_id, message))
        return event_id

    async def replay_events_after(self, last_event_id: str, send_callback: EventCallback) -> str | None:
        position = next((i for i, e in enumerate(self.events) if e[0] == last_event_id), None)
        if position is None:
            return None
        stream_id = self.events[position][1]
        for event_id, sid, message in self.events[position + 1 :]:
            if sid == stream_id and message is not None:
                await send_callback(EventMessage(message, event_id))
        return stream_id


def free_port() -> int:
    """A loopback port nothing listens on right now (for a server that starts later)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


async def eventually(check: Any, timeout: float = 10.0, what: str = "condition") -> None:
    """Poll `check()` (sync or async) until it is true; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)
