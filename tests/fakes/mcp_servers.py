"""Real MCP servers for tests, built with the official MCP Python SDK (`mcp` package).

`ToolServer` runs the SDK's Streamable HTTP app under uvicorn on a loopback port in a
thread of its own (so a slow tool never stalls the test's event loop). Modes:
`json_response=True` answers each POST with one JSON body, otherwise with an SSE stream;
`stateless=True` keeps no sessions. `restart()` brings up a fresh server on the same port,
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

import uvicorn
from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ToolError

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
    port: int = 0
    requests: list[SeenRequest] = field(default_factory=list)
    calls: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    _server: uvicorn.Server | None = None
    _thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/mcp"

    def build(self) -> MCPServer:
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

        return server

    def _app(self) -> Any:
        app = self.build().streamable_http_app(
            json_response=self.json_response, stateless_http=self.stateless
        )
        seen = self.requests

        async def recording(scope: dict[str, Any], receive: Any, send: Any) -> None:
            if scope["type"] == "http":
                headers = {k.decode().lower(): v.decode() for k, v in scope["headers"]}
                seen.append(SeenRequest(scope["method"], headers))
            await app(scope, receive, send)

        return recording

    async def start(self) -> ToolServer:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", self.port))
        self.port = sock.getsockname()[1]
        config = uvicorn.Config(
            self._app(), log_level="warning", lifespan="on", timeout_graceful_shutdown=1, access_log=False
        )
        server = uvicorn.Server(config)
        self._server = server
        self._thread = threading.Thread(target=lambda: server.run(sockets=[sock]), daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 10
        while not server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError("the MCP test server did not start")
            await asyncio.sleep(0.01)
        return self

    async def stop(self) -> None:
        server, thread = self._server, self._thread
        if server is None or thread is None:
            return
        server.should_exit = True
        await asyncio.get_running_loop().run_in_executor(None, thread.join, 10)
        self._server = self._thread = None

    async def restart(self) -> None:
        await self.stop()
        await self.start()

    def methods(self, method: str) -> list[SeenRequest]:
        return [r for r in self.requests if r.method == method]


def free_port() -> int:
    """A loopback port nothing listens on right now (for a server that starts later)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
