"""A client for one MCP server over the Streamable HTTP transport (protocol 2025-11-25,
and the earlier revisions a server may answer with).

Every JSON-RPC message is its own POST to the server's one endpoint, sent with
`Accept: application/json, text/event-stream`. The server answers a request either with one
JSON body or with an SSE stream that is read until the response carrying the request's id
(notifications and server requests met on the way are handled). A server that closes such
a stream after sending an event id is resumed with a GET carrying `Last-Event-ID`.
The `Mcp-Session-Id` the server assigns at `initialize` is sent on every later message, as is
the negotiated `MCP-Protocol-Version`; a 404 for a live session means the server forgot it
(restarted), so the client initializes again, once, and repeats the message. `close()`
ends the session with a DELETE.

The client has no timeouts of its own: callers wrap each call in `asyncio.timeout`.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import Callable
from typing import Any

import aiohttp
import orjson

from ferro_proxy import __version__
from ferro_proxy.sse import SSESplitter

log = logging.getLogger("ferro_proxy.mcp")

PROTOCOL_VERSION = "2025-11-25"
SUPPORTED_VERSIONS = frozenset({"2025-11-25", "2025-06-18", "2025-03-26", "2024-11-05"})
CLIENT_INFO = {"name": "ferro-proxy", "version": __version__}
ACCEPT_BOTH = "application/json, text/event-stream"
METHOD_NOT_FOUND = -32601
# The caller's asyncio.timeout bounds a whole call; only connecting has its own limit.
_NO_TOTAL = aiohttp.ClientTimeout(total=None, sock_connect=10)
_MAX_RESUME_DELAY = 30.0
_MAX_PAGES = 1000

NotificationHandler = Callable[[str, dict[str, Any]], None]


class McpError(Exception):
    """A failure talking to an MCP server. The message names the server, never a secret;
    `category` is the short word the public `/health` shows instead of the message."""

    category = "error"

    def __init__(self, message: str, category: str | None = None) -> None:
        super().__init__(message)
        if category is not None:
            self.category = category


class McpTransportError(McpError):
    """The server could not be reached, answered with an HTTP error or broke the stream."""

    category = "protocol_error"


class McpSessionExpired(McpError):
    """The server answered 404 for our session: it no longer knows it."""

    category = "session_expired"


class McpRpcError(McpError):
    """The server answered with a JSON-RPC error object."""

    def __init__(self, message: str, code: int | None = None, data: Any = None) -> None:
        super().__init__(message)
        self.code = code
        self.data = data


def connect_category(exc: BaseException) -> str:
    """The public `/health` word for a failed connection or exchange."""
    if isinstance(exc, aiohttp.ClientConnectorDNSError):
        return "dns"
    if isinstance(exc, aiohttp.ClientSSLError | aiohttp.ClientConnectorCertificateError):
        return "tls"
    if isinstance(exc, aiohttp.ServerTimeoutError | TimeoutError):
        return "timeout"
    if isinstance(exc, aiohttp.ClientConnectionError | OSError):
        return "unreachable"
    return "protocol_error"


def parse_sse_event(raw: bytes) -> tuple[str | None, int | None, str]:
    """(event id, retry milliseconds, data) of one SSE event."""
    event_id: str | None = None
    retry: int | None = None
    data: list[str] = []
    for line in raw.decode("utf-8", "replace").split("\n"):
        if not line or line.startswith(":"):
            continue
        key, _, value = line.partition(":")
        if value.startswith(" "):
            value = value[1:]
        if key == "data":
            data.append(value)
        elif key == "id":
            event_id = value
        elif key == "retry" and value.isdigit():
            retry = int(value)
    return event_id, retry, "\n".join(data)


class McpClient:
    """One server's session: initialize, list tools, call tools, listen, close."""

    def __init__(
        self,
        name: str,
        url: str,
        headers: dict[str, str],
        session: aiohttp.ClientSession,
        on_notification: NotificationHandler | None = None,
        on_reinitialized: Callable[[], None] | None = None,
    ) -> None:
        self.name = name
        self.url = url
        self.extra_headers = dict(headers)
        self.http = session
        self.on_notification = on_notification
        self.on_reinitialized = on_reinitialized
        self.session_id: str | None = None
        self.protocol_version: str | None = None
        self.server_info: dict[str, Any] = {}
        self.capabilities: dict[str, Any] = {}
        self.generation = 0  # bumped by every successful initialize
        self._ids = itertools.count(1)
        self._init_lock = asyncio.Lock()
        self._background: set[asyncio.Task[Any]] = set()

    # ------------------------------------------------------------ the protocol

    async def initialize(self) -> None:
        """Start a new session: `initialize`, then `notifications/initialized`."""
        self.session_id = None
        self.protocol_version = None
        result = await self._request(
            "initialize",
            {"protocolVersion": PROTOCOL_VERSION, "capabilities": {}, "clientInfo": CLIENT_INFO},
        )
        if not isinstance(result, dict):
            raise McpTransportError(f"MCP server {self.name!r} sent an invalid initialize result")
        version = result.get("protocolVersion")
        if version not in SUPPORTED_VERSIONS:
            raise McpError(
                f"MCP server {self.name!r} speaks protocol {version!r}, which this gateway does not",
                "protocol_error",
            )
        self.protocol_version = str(version)
        info = result.get("serverInfo")
        caps = result.get("capabilities")
        self.server_info = info if isinstance(info, dict) else {}
        self.capabilities = caps if isinstance(caps, dict) else {}
        await self._notify("notifications/initialized")
        self.generation += 1

    async def request(self, method: str, params: dict[str, Any] | None = None) -> Any:
        """Send a request in the current session, starting a new one once if it expired."""
        generation = self.generation
        try:
            return await self._request(method, params)
        except McpSessionExpired:
            await self.reinitialize(generation)
            return await self._request(method, params)

    async def reinitialize(self, seen_generation: int) -> None:
        """Start a new session unless a concurrent caller already replaced `seen_generation`."""
        async with self._init_lock:
            if self.generation != seen_generation:
                return
            log.info("MCP server %s lost our session; starting a new one", self.name)
            await self.initialize()
        if self.on_reinitialized is not None:
            self.on_reinitialized()

    async def list_tools(self) -> list[dict[str, Any]]:
        """Every tool the server offers, following `nextCursor` pagination."""
        tools: list[dict[str, Any]] = []
        cursor: str | None = None
        seen: set[str] = set()
        for _ in range(_MAX_PAGES):
            result = await self.request("tools/list", {"cursor": cursor} if cursor else {})
            page = result.get("tools") if isinstance(result, dict) else None
            if not isinstance(page, list):
                raise McpTransportError(f"MCP server {self.name!r} sent an invalid tools/list result")
            tools.extend(t for t in page if isinstance(t, dict) and isinstance(t.get("name"), str))
            cursor = result.get("nextCursor")
            if not cursor:
                return tools
            if cursor in seen:
                raise McpTransportError(f"MCP server {self.name!r} repeats tools/list cursor")
            seen.add(cursor)
        raise McpTransportError(f"MCP server {self.name!r} paginates tools/list without end")

    async def call_tool(self, name: str, arguments: dict[str, Any]) -> dict[str, Any]:
        """The raw `CallToolResult` (`content`, `structuredContent`, `isError`)."""
        result = await self.request("tools/call", {"name": name, "arguments": arguments})
        if not isinstance(result, dict):
            raise McpTransportError(f"MCP server {self.name!r} sent an invalid tools/call result")
        return result

    async def listen(self) -> None:
        """Read the server's GET stream of notifications until the server ends it for good.

        Returns when the server offers no such stream (405) or there is no session to
        listen on; raises McpError when it fails, McpSessionExpired when it forgot us.
        """
        last_id: str | None = None
        while self.session_id is not None:
            headers = self._headers("text/event-stream", json_body=False)
            if last_id is not None:
                headers["Last-Event-ID"] = last_id
            try:
                resp = await self.http.get(self.url, headers=headers, timeout=_NO_TOTAL)
            except (aiohttp.ClientError, OSError) as exc:
                raise self._unreachable(exc) from None
            retry_ms: int | None = None
            try:
                if resp.status == 405:
                    return
                await self._check_status(resp, "GET")
                if _content_type(resp) != "text/event-stream":
                    return
                last_id, retry_ms = await self._read_events(resp, None, last_id)
            except (aiohttp.ClientError, OSError) as exc:
                raise McpTransportError(
                    f"MCP server {self.name!r} stream broke: {type(exc).__name__}", connect_category(exc)
                ) from None
            finally:
                resp.release()
            await asyncio.sleep(min(_MAX_RESUME_DELAY, (retry_ms or 1000) / 1000))

    async def close(self) -> None:
        """End the session (DELETE) and stop background replies."""
        for task in list(self._background):
            task.cancel()
        session_id, self.session_id = self.session_id, None
        if session_id is None or self.http.closed:
            return
        headers = {**self.extra_headers, "Mcp-Session-Id": session_id}
        if self.protocol_version:
            headers["MCP-Protocol-Version"] = self.protocol_version
        try:
            async with asyncio.timeout(2):
                resp = await self.http.delete(self.url, headers=headers, timeout=_NO_TOTAL)
                resp.release()
        except (TimeoutError, aiohttp.ClientError, OSError):
            pass  # the session expires on the server's side anyway

    # ------------------------------------------------------------ transport

    def _headers(self, accept: str, *, json_body: bool = True) -> dict[str, str]:
        headers = {**self.extra_headers, "Accept": accept}
        if json_body:
            headers["Content-Type"] = "application/json"
        if self.session_id is not None:
            headers["Mcp-Session-Id"] = self.session_id
        if self.protocol_version is not None:
            headers["MCP-Protocol-Version"] = self.protocol_version
        return headers

    def _unreachable(self, exc: BaseException) -> McpTransportError:
        return McpTransportError(
            f"MCP server {self.name!r} could not be reached: {type(exc).__name__}", connect_category(exc)
        )

    async def _post(self, message: dict[str, Any]) -> aiohttp.ClientResponse:
        try:
            return await self.http.post(
                self.url, data=orjson.dumps(message), headers=self._headers(ACCEPT_BOTH), timeout=_NO_TOTAL
            )
        except (aiohttp.ClientError, OSError) as exc:
            raise self._unreachable(exc) from None

    async def _check_status(self, resp: aiohttp.ClientResponse, what: str) -> None:
        if resp.status == 404 and self.session_id is not None:
            raise McpSessionExpired(f"MCP server {self.name!r} no longer knows our session")
        if resp.status < 400:
            return
        detail = ""
        try:
            body = await resp.content.read(4096)
            parsed = orjson.loads(body)
            err = parsed.get("error") if isinstance(parsed, dict) else None
            if isinstance(err, dict) and isinstance(err.get("message"), str):
                detail = ": " + err["message"][:300]
        except (orjson.JSONDecodeError, aiohttp.ClientError, OSError, TimeoutError):
            pass
        raise McpTransportError(
            f"MCP server {self.name!r} answered {what} with HTTP {resp.status}{detail}",
            "auth_failed" if resp.status in (401, 403) else "http_error",
        )

    async def _request(self, method: str, params: dict[str, Any] | None) -> Any:
        req_id = next(self._ids)
        message: dict[str, Any] = {"jsonrpc": "2.0", "id": req_id, "method": method}
        if params is not None:
            message["params"] = params
        try:
            return await self._exchange(message, req_id, method)
        except asyncio.CancelledError:  # timed out or abandoned: tell the server to stop
            if method != "initialize" and self.session_id is not None:
                self._spawn(
                    self._notify("notifications/cancelled", {"requestId": req_id, "reason": "timeout"})
                )
            raise

    async def _exchange(self, message: dict[str, Any], req_id: int, method: str) -> Any:
        resp = await self._post(message)
        try:
            if method == "initialize":
                if resp.status < 400:
                    self.session_id = resp.headers.get("Mcp-Session-Id") or None
            await self._check_status(resp, method)
            ctype = _content_type(resp)
            if ctype == "application/json":
                found, result = self._take(await resp.read(), req_id)
                if found:
                    return result
                raise McpTransportError(f"MCP server {self.name!r} answered {method} without its response")
            if ctype == "text/event-stream":
                return await self._read_sse_answer(resp, req_id, method)
            raise McpTransportError(
                f"MCP server {self.name!r} answered {method} with {ctype or 'no content type'}"
            )
        except (aiohttp.ClientError, OSError) as exc:
            raise McpTransportError(
                f"MCP server {self.name!r} broke off {method}: {type(exc).__name__}", connect_category(exc)
            ) from None
        finally:
            resp.release()

    async def _read_sse_answer(self, resp: aiohttp.ClientResponse, req_id: int, method: str) -> Any:
        """Read SSE until our response; resume with GET + Last-Event-ID if the server hangs up."""
        last_id: str | None = None
        while True:
            try:
                last_id, retry_ms = await self._read_events(resp, req_id, last_id)
            except _Answered as answered:
                return answered.result
            finally:
                resp.release()
            if last_id is None:
                raise McpTransportError(
                    f"MCP server {self.name!r} ended the {method} stream before answering"
                )
            await asyncio.sleep(min(_MAX_RESUME_DELAY, (retry_ms or 1000) / 1000))
            headers = self._headers("text/event-stream", json_body=False)
            headers["Last-Event-ID"] = last_id
            try:
                resp = await self.http.get(self.url, headers=headers, timeout=_NO_TOTAL)
            except (aiohttp.ClientError, OSError) as exc:
                raise self._unreachable(exc) from None
            if resp.status == 405:
                resp.release()
                raise McpTransportError(
                    f"MCP server {self.name!r} closed the {method} stream and cannot resume it"
                )
            try:
                await self._check_status(resp, "GET")
            except McpError:
                resp.release()
                raise

    async def _read_events(
        self, resp: aiohttp.ClientResponse, req_id: int | None, last_id: str | None
    ) -> tuple[str | None, int | None]:
        """Handle every event of one SSE response; raise _Answered at our response."""
        splitter = SSESplitter()
        retry_ms: int | None = None

        def handle(raw: bytes) -> None:
            nonlocal last_id, retry_ms
            event_id, retry, data = parse_sse_event(raw)
            if event_id is not None:
                last_id = event_id
            if retry is not None:
                retry_ms = retry
            if data:  # an event with only an id primes resumption and carries nothing
                found, result = self._take(data.encode(), req_id)
                if found:
                    raise _Answered(result)

        async for chunk in resp.content.iter_any():
            for raw in splitter.feed(chunk):
                handle(raw)
        tail = splitter.flush()
        if tail is not None:
            handle(tail)
        return last_id, retry_ms

    def _take(self, payload: bytes, req_id: int | None) -> tuple[bool, Any]:
        """Dispatch every message in `payload`; (True, result) if one answers `req_id`."""
        try:
            parsed = orjson.loads(payload)
        except orjson.JSONDecodeError:
            raise McpTransportError(f"MCP server {self.name!r} sent a message that is not JSON") from None
        found: tuple[bool, Any] = (False, None)
        for msg in parsed if isinstance(parsed, list) else [parsed]:
            if not isinstance(msg, dict):
                continue
            method = msg.get("method")
            if isinstance(method, str):
                if "id" in msg:
                    self._spawn(self._answer_server_request(msg))
                elif self.on_notification is not None:
                    params = msg.get("params")
                    self.on_notification(method, params if isinstance(params, dict) else {})
                continue
            if req_id is not None and msg.get("id") == req_id:
                err = msg.get("error")
                if isinstance(err, dict):
                    code = err.get("code")
                    raise McpRpcError(
                        f"MCP server {self.name!r}: {err.get('message') or 'error'}"
                        + (f" (code {code})" if code is not None else ""),
                        code if isinstance(code, int) else None,
                        err.get("data"),
                    )
                found = (True, msg.get("result"))
        return found

    async def _notify(self, method: str, params: dict[str, Any] | None = None) -> None:
        message: dict[str, Any] = {"jsonrpc": "2.0", "method": method}
        if params is not None:
            message["params"] = params
        await self._send_without_answer(message, method)

    async def _answer_server_request(self, msg: dict[str, Any]) -> None:
        """Servers may ping us; we offer no other client capability."""
        if msg.get("method") == "ping":
            answer: dict[str, Any] = {"jsonrpc": "2.0", "id": msg["id"], "result": {}}
        else:
            answer = {
                "jsonrpc": "2.0",
                "id": msg["id"],
                "error": {"code": METHOD_NOT_FOUND, "message": "not supported by this client"},
            }
        try:
            await self._send_without_answer(answer, "response")
        except McpError as exc:
            log.debug("MCP server %s: could not answer its request: %s", self.name, exc)

    async def _send_without_answer(self, message: dict[str, Any], what: str) -> None:
        resp = await self._post(message)
        try:
            await self._check_status(resp, what)
        finally:
            resp.release()

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(self._quietly(coro))
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _quietly(self, coro: Any) -> None:
        try:
            await coro
        except (McpError, RuntimeError, aiohttp.ClientError) as exc:  # best effort; RuntimeError: closed
            log.debug("MCP server %s: background message failed: %s", self.name, exc)


class _Answered(Exception):
    def __init__(self, result: Any) -> None:
        self.result = result


def _content_type(resp: aiohttp.ClientResponse) -> str:
    return resp.headers.get("Content-Type", "").split(";", 1)[0].strip().lower()
