"""Keeps every configured MCP server connected and knows their tools.

One `ServerLink` per `mcp_servers:` entry connects in the background (at startup and on
each config reload), so a slow or dead tool server never delays the gateway. A server that
cannot be reached is retried with exponential backoff; its state shows on `/health`, in
`ferro_mcp_server_up{server}`, and (with `required: true`) fails `/ready`. While a server is
up its tool list is kept fresh: re-listed after `notifications/tools/list_changed` (read
from the server's GET stream or any answer stream) and after a new session.

`McpManager.index` is an immutable snapshot of the tools of every up server, deduplicated
by name (the first server in config order wins), in the shape the model is offered.
"""

from __future__ import annotations

import asyncio
import logging
import random
import re
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, urlsplit

import aiohttp
import orjson

from ferro_proxy.admin_app import READINESS_CHECKS
from ferro_proxy.config import GatewayConfig, McpServerConfig
from ferro_proxy.health import DETAIL_KEY, HEALTH_SECTIONS
from ferro_proxy.mcp.client import McpClient, McpError, McpRpcError, McpSessionExpired
from ferro_proxy.url_redact import REDACTED

if TYPE_CHECKING:
    from ferro_proxy.gateway import Gateway

log = logging.getLogger("ferro_proxy.mcp")

INITIAL_BACKOFF = 0.25
MAX_BACKOFF = 30.0
FIRST_CONNECT_WAIT = 5.0  # the longest a request waits for a server's very first connect
MIN_SETUP_TIMEOUT = 10.0  # connecting and listing tools get at least this, whatever the call timeout
_NOT_A_FUNCTION_NAME = re.compile(r"[^A-Za-z0-9_-]")
_MIN_SECRET = 4  # shorter config values would mask ordinary words


@dataclass(frozen=True, slots=True)
class ToolRef:
    exposed: str  # the function name the model sees (OpenAI allows [A-Za-z0-9_-]{1,64})
    name: str  # the tool's own name on its server
    server: str
    spec: dict[str, Any]  # the OpenAI `tools[]` entry


@dataclass(frozen=True, slots=True)
class ToolIndex:
    tools: tuple[ToolRef, ...] = ()
    by_name: dict[str, ToolRef] | None = None

    def get(self, name: str) -> ToolRef | None:
        return self.by_name.get(name) if self.by_name else None


@dataclass(slots=True)
class ToolOutcome:
    text: str  # what the model reads in the `tool` message
    status: str  # ok | error | timeout | unavailable
    duration: float


def config_secrets(config: McpServerConfig) -> tuple[str, ...]:
    """The values of a server's config that are credentials: every header value, every
    query value and the userinfo of its URL. Longest first, so no part of one is left."""
    found = {v for v in config.headers.values() if v}
    try:
        parts = urlsplit(config.url)
        found.update(v for v in (parts.username, parts.password) if v)
        found.update(v for _, v in parse_qsl(parts.query, keep_blank_values=True) if v)
        for param in parts.query.split("&"):  # also as written (percent-encoded), bare ones too
            name, eq, raw = param.partition("=")
            found.add(raw if eq else name)
    except ValueError:
        pass
    for value in list(found):  # a header `Bearer <token>` may be quoted as the bare token
        scheme, _, rest = value.partition(" ")
        if rest and scheme.isalpha():
            found.add(rest.strip())
    return tuple(sorted((v for v in found if len(v) >= _MIN_SECRET), key=len, reverse=True))


def mask_values(text: str, secrets: tuple[str, ...]) -> str:
    for secret in secrets:
        text = text.replace(secret, REDACTED)
    return text


def exposed_name(name: str) -> str:
    return _NOT_A_FUNCTION_NAME.sub("_", name)[:64] or "tool"


def openai_tool(exposed: str, tool: dict[str, Any]) -> dict[str, Any]:
    schema = tool.get("inputSchema")
    function: dict[str, Any] = {
        "name": exposed,
        "parameters": schema if isinstance(schema, dict) else {"type": "object", "properties": {}},
    }
    description = tool.get("description") or tool.get("title")
    if isinstance(description, str) and description:
        function["description"] = description
    return {"type": "function", "function": function}


def render_result(result: dict[str, Any]) -> tuple[str, bool]:
    """A `CallToolResult` as the text of a `tool` message, and whether it is an error."""
    parts: list[str] = []
    content = result.get("content")
    for item in content if isinstance(content, list) else []:
        if not isinstance(item, dict):
            continue
        kind = item.get("type")
        if kind == "text":
            parts.append(str(item.get("text", "")))
        elif kind == "resource":
            resource = item.get("resource") if isinstance(item.get("resource"), dict) else {}
            parts.append(str(resource.get("text") or f"[resource {resource.get('uri', '')}]"))
        elif kind == "resource_link":
            parts.append(f"[resource {item.get('uri', '')}]")
        elif kind in ("image", "audio"):
            parts.append(f"[{kind} {item.get('mimeType', '')}]".replace(" ]", "]"))
    if not parts and result.get("structuredContent") is not None:
        parts.append(orjson.dumps(result["structuredContent"]).decode())
    return "\n".join(parts), bool(result.get("isError"))


class ServerLink:
    """One configured MCP server: its connect loop, session, listener and tools."""

    def __init__(self, config: McpServerConfig, http: aiohttp.ClientSession, manager: McpManager) -> None:
        self.config = config
        self.manager = manager
        self.state = "connecting"  # connecting | up | down
        self.error: str | None = None  # what went wrong, the server's secrets masked
        self.error_category: str | None = None  # the short word the public /health shows
        self.secrets = config_secrets(config)
        self.tools: tuple[ToolRef, ...] = ()
        self.attempted = asyncio.Event()  # set after the first connect attempt, good or bad
        self.client = McpClient(
            config.name,
            config.url,
            config.headers,
            http,
            on_notification=self._on_notification,
            on_reinitialized=self._schedule_refresh,
        )
        self._broken = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._refresh: asyncio.Task[None] | None = None
        self._refresh_again = False
        self._calls = 0  # tool calls in flight on this server
        self._idle = asyncio.Event()
        self._idle.set()

    @property
    def name(self) -> str:
        return self.config.name

    @property
    def setup_timeout(self) -> float:
        return max(self.config.timeout_seconds, MIN_SETUP_TIMEOUT)

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name=f"mcp:{self.name}")

    async def stop(self) -> None:
        await self._stop_tasks()
        await self.client.close()

    @property
    def busy(self) -> bool:
        return self._calls > 0

    async def retire(self) -> None:
        """Stop after a reload removed or changed this server: the tool calls in flight (each
        bounded by the server's timeout) finish first, then the session is ended."""
        await self._stop_tasks()
        try:
            async with asyncio.timeout(self.config.timeout_seconds + 1):
                await self._idle.wait()
        except TimeoutError:
            pass
        await self.client.close()

    async def _stop_tasks(self) -> None:
        for task in (self._task, self._refresh):
            if task is not None:
                task.cancel()
        for task in (self._task, self._refresh):
            if task is not None:
                try:
                    await task
                except (asyncio.CancelledError, Exception):
                    pass

    async def call_tool(self, name: str, arguments: dict[str, Any]) -> dict[str, Any]:
        self._calls += 1
        self._idle.clear()
        try:
            return await self.client.call_tool(name, arguments)
        finally:
            self._calls -= 1
            if self._calls == 0:
                self._idle.set()

    # ------------------------------------------------------------ connecting

    async def _run(self) -> None:
        backoff = INITIAL_BACKOFF
        while True:
            try:
                async with asyncio.timeout(self.setup_timeout):
                    await self.client.initialize()
                    tools = await self.client.list_tools()
                self._set_tools(tools)
                self._set_state("up", None, None)
                backoff = INITIAL_BACKOFF
                self.attempted.set()
                await self._serve_until_broken()
            except Exception as exc:  # whatever went wrong, the loop keeps retrying
                if isinstance(exc, McpError):
                    reason, category = str(exc), exc.category
                elif isinstance(exc, TimeoutError):
                    reason, category = "did not answer in time", "timeout"
                else:
                    log.exception("MCP server %s: unexpected failure", self.name)
                    reason, category = f"unexpected failure: {type(exc).__name__}", "error"
                self._set_state("down", reason, category)
                self.attempted.set()
                try:
                    async with asyncio.timeout(backoff * random.uniform(0.8, 1.2)):
                        await self._broken.wait()
                except TimeoutError:
                    pass
                backoff = min(backoff * 2, MAX_BACKOFF)

    async def _serve_until_broken(self) -> None:
        """Listen for notifications until someone reports the server broken."""
        self._broken.clear()
        listener = asyncio.get_running_loop().create_task(self._listen())
        try:
            await self._broken.wait()
        finally:
            listener.cancel()
            try:
                await listener
            except (asyncio.CancelledError, Exception):
                pass
        self._broken.clear()
        if self.state == "up":
            self._set_state("down", self.error or "connection lost", self.error_category or "unreachable")
        raise McpError(
            self.error or f"MCP server {self.name!r} connection lost", self.error_category or "unreachable"
        )

    async def _listen(self) -> None:
        while True:
            generation = self.client.generation
            try:
                await self.client.listen()
                return  # the server offers no notification stream
            except McpSessionExpired:
                try:
                    async with asyncio.timeout(self.setup_timeout):
                        await self.client.reinitialize(generation)
                except McpError as exc:
                    self.report_failure(str(exc), exc.category)
                    return
                except TimeoutError:
                    self.report_failure("re-initialize timed out", "timeout")
                    return
            except McpError as exc:
                self.report_failure(str(exc), exc.category)
                return

    def report_failure(self, reason: str, category: str = "error") -> None:
        """A call or the listener lost the server: mark it down and let the loop reconnect."""
        if self.state == "up":
            self._set_state("down", reason, category)
        self._broken.set()

    def _set_state(self, state: str, error: str | None, category: str | None) -> None:
        changed = state != self.state
        self.state = state
        self.error = mask_values(error, self.secrets) if error else None
        self.error_category = category if error else None
        self.manager.server_up.labels(self.name).set(1 if state == "up" else 0)
        if changed and state == "up":
            log.info(
                "MCP server %s is up (protocol %s, %d tools)",
                self.name,
                self.client.protocol_version,
                len(self.tools),
            )
        elif changed and state == "down":
            log.warning("MCP server %s is down: %s", self.name, self.error)
        if changed:
            self.manager.rebuild_index()

    # ------------------------------------------------------------ tools

    def _set_tools(self, tools: list[dict[str, Any]]) -> None:
        allowed = self.config.allowed_tools
        if allowed is not None:
            offered = {t["name"] for t in tools}
            missing = [n for n in allowed if n not in offered]
            if missing:
                log.warning("MCP server %s does not offer allowed tools: %s", self.name, ", ".join(missing))
            tools = [t for t in tools if t["name"] in allowed]
        refs = []
        for tool in tools:
            exposed = exposed_name(tool["name"])
            refs.append(ToolRef(exposed, tool["name"], self.name, openai_tool(exposed, tool)))
        self.tools = tuple(refs)
        if self.state == "up":
            self.manager.rebuild_index()

    def _on_notification(self, method: str, params: dict[str, Any]) -> None:
        if method == "notifications/tools/list_changed":
            self._schedule_refresh()

    def _schedule_refresh(self) -> None:
        if self._refresh is not None and not self._refresh.done():
            self._refresh_again = True
            return
        self._refresh = asyncio.get_running_loop().create_task(self._refresh_tools())

    async def _refresh_tools(self) -> None:
        self._refresh_again = True
        while self._refresh_again:
            self._refresh_again = False
            try:
                async with asyncio.timeout(self.setup_timeout):
                    tools = await self.client.list_tools()
            except (McpError, TimeoutError) as exc:
                log.warning("MCP server %s: could not refresh its tool list: %s", self.name, exc)
                return
            self._set_tools(tools)
            log.info("MCP server %s: tool list refreshed (%d tools)", self.name, len(self.tools))

    # ------------------------------------------------------------ reporting

    def health(self) -> dict[str, Any]:
        detail: dict[str, Any] = {
            "status": self.state,
            "required": self.config.required,
            "tools": [t.exposed for t in self.tools] if self.state == "up" else [],
        }
        if self.client.protocol_version and self.state == "up":
            detail["protocol_version"] = self.client.protocol_version
        if self.error and self.state != "up":
            detail["error"] = self.error_category or "error"
            detail[DETAIL_KEY] = self.error
        return detail


class McpManager:
    """Every configured MCP server, for the `mcp` filter, `/health` and `/ready`."""

    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway
        self.links: dict[str, ServerLink] = {}
        self.index = ToolIndex()
        self._retiring: set[asyncio.Task[None]] = set()  # links a reload removed, finishing calls
        self._http: aiohttp.ClientSession | None = None
        self._clashes_logged: set[tuple[str, str, str]] = set()
        metrics = gateway.metrics
        self.server_up = metrics.gauge(
            "ferro_mcp_server_up", "Whether the MCP server is connected (1) or not (0)", ["server"]
        )
        self.tool_calls = metrics.counter(
            "ferro_mcp_tool_calls_total", "MCP tool calls made for the model", ["server", "tool", "status"]
        )
        self.tool_duration = metrics.histogram(
            "ferro_mcp_tool_call_duration_seconds", "Time an MCP tool call took", ["server", "tool"]
        )

    @classmethod
    def of(cls, gateway: Gateway) -> McpManager:
        """The gateway's manager, created (and hooked to config applies) on first use."""
        manager = gateway.services.get("mcp")
        if not isinstance(manager, McpManager):
            manager = cls(gateway)
            gateway.services["mcp"] = manager
            gateway.on_apply.append(manager.apply)
        return manager

    async def apply(self, config: GatewayConfig) -> None:
        """Start servers that are new or changed, stop the ones that went away."""
        wanted: dict[str, McpServerConfig] = {}
        for server in config.mcp_servers:
            if server.name in wanted:
                log.warning(
                    "mcp_servers: the name %r is used twice; only the first entry is used", server.name
                )
                continue
            wanted[server.name] = server
        for name, link in list(self.links.items()):
            if wanted.get(name) != link.config:
                del self.links[name]
                if link.busy:  # let the tool calls in flight finish before the session ends
                    task = asyncio.get_running_loop().create_task(link.retire(), name=f"mcp-retire:{name}")
                    self._retiring.add(task)
                    task.add_done_callback(self._retiring.discard)
                else:
                    await link.stop()
                try:
                    self.server_up.remove(name)
                except KeyError:
                    pass
        if wanted and self._http is None:
            self._http = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=0, limit_per_host=64, keepalive_timeout=30),
                trust_env=False,
            )
        links: dict[str, ServerLink] = {}
        for name, server in wanted.items():  # keep config order: it decides name clashes
            link = self.links.get(name)
            if link is None:
                assert self._http is not None
                link = ServerLink(server, self._http, self)
                self.server_up.labels(name).set(0)
                link.start()
            links[name] = link
        self.links = links
        self.rebuild_index()

    def rebuild_index(self) -> None:
        by_name: dict[str, ToolRef] = {}
        for link in self.links.values():
            if link.state != "up":
                continue
            for ref in link.tools:
                winner = by_name.get(ref.exposed)
                if winner is None:
                    by_name[ref.exposed] = ref
                    continue
                clash = (ref.exposed, winner.server, ref.server)
                if clash not in self._clashes_logged:
                    self._clashes_logged.add(clash)
                    log.warning(
                        "MCP tool %r is offered by servers %s and %s; using %s (first in mcp_servers)",
                        ref.exposed,
                        winner.server,
                        ref.server,
                        winner.server,
                    )
        self.index = ToolIndex(tuple(by_name.values()), by_name)

    async def settled_index(self) -> ToolIndex:
        """The index, after waiting (briefly) for servers still on their first connect."""
        pending = [link for link in self.links.values() if not link.attempted.is_set()]
        if pending:
            try:
                async with asyncio.timeout(FIRST_CONNECT_WAIT):
                    await asyncio.gather(*(link.attempted.wait() for link in pending))
            except TimeoutError:
                pass
        return self.index

    def max_call_depth(self, server: str) -> int:
        link = self.links.get(server)
        return link.config.max_call_depth if link is not None else 0

    async def call_tool(self, ref: ToolRef, arguments: dict[str, Any]) -> ToolOutcome:
        """Call one tool with its server's timeout. Never raises: failures become text."""
        link = self.links.get(ref.server)
        started = time.perf_counter()
        if link is None or link.state != "up":
            status, text = "unavailable", f"error: MCP server {ref.server!r} is not available right now"
        else:
            timeout = link.config.timeout_seconds
            try:
                async with asyncio.timeout(timeout):
                    result = await link.call_tool(ref.name, arguments)
                text, is_error = render_result(result)
                status = "error" if is_error else "ok"
                if is_error:
                    text = f"error: {text or 'the tool failed'}"
            except TimeoutError:
                status = "timeout"
                text = f"error: tool {ref.name!r} on MCP server {ref.server!r} did not answer within {timeout:g} s"
            except McpRpcError as exc:
                status, text = "error", f"error: {exc}"
            except McpError as exc:
                status, text = "unavailable", f"error: {exc}"
                link.report_failure(str(exc), exc.category)
            if status != "ok":  # the server's own error text may quote the credentials we sent it
                text = mask_values(text, link.secrets)
        duration = time.perf_counter() - started
        self.tool_calls.labels(ref.server, ref.name, status).inc()
        self.tool_duration.labels(ref.server, ref.name).observe(duration)
        return ToolOutcome(text, status, duration)

    def health(self) -> tuple[str, dict[str, Any], bool]:
        detail = {name: link.health() for name, link in self.links.items()}
        healthy = all(link.state != "down" for link in self.links.values())
        return "mcp_servers", detail, healthy

    def not_ready(self) -> str | None:
        down = [name for name, link in self.links.items() if link.config.required and link.state != "up"]
        return f"required MCP servers not connected: {', '.join(down)}" if down else None

    async def close(self) -> None:
        links, self.links = self.links, {}
        await asyncio.gather(*(link.stop() for link in links.values()), return_exceptions=True)
        await asyncio.gather(*self._retiring, return_exceptions=True)
        self.index = ToolIndex()
        if self._http is not None:
            await self._http.close()
            self._http = None


def _health_section(gateway: Gateway) -> tuple[str, dict[str, Any], bool]:
    manager = gateway.services.get("mcp")
    if not isinstance(manager, McpManager):
        return "mcp_servers", {}, True
    return manager.health()


def _readiness(gateway: Gateway) -> str | None:
    manager = gateway.services.get("mcp")
    return manager.not_ready() if isinstance(manager, McpManager) else None


HEALTH_SECTIONS.append(_health_section)
READINESS_CHECKS.append(_readiness)
