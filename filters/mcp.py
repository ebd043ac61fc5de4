"""The `mcp` filter: offers the tools of the configured MCP servers to the model and runs
the model's calls to them (the agentic loop, ferro_proxy/mcp/loop.py).

When `mcp_servers:` is set and `plugins:` has no `mcp` entry, the filter is added first
(after gateway-auth), so every tool turn passes through the guardrail, budget and other
filters. List `mcp` in `plugins:` to place it yourself.

When tools are offered to a Messages-ingress request, the Anthropic provider translates instead
of passing the client's body through natively, so the loop can read the model's tool calls.
"""

from __future__ import annotations

from typing import Any

from ferro_proxy.chain import Filter, Next, register_filter
from ferro_proxy.config import Base, Duration, GatewayConfig, PluginConfig
from ferro_proxy.exchange import Exchange, Reply
from ferro_proxy.gateway import CHAIN_HOOKS, Gateway
from ferro_proxy.mcp.loop import ToolLoop
from ferro_proxy.mcp.manager import McpManager
from providers.translate_anthropic import NATIVE_OFF


@register_filter
class McpFilter(Filter):
    name = "mcp"
    type = "mcp"
    description = "Offers the tools of mcp_servers to the model and runs its calls to them."

    class Config(Base):
        heartbeat_seconds: Duration = 5.0  # SSE comment interval while tools run in a stream

    def __init__(self, config: Any, gateway: Gateway, plugin: PluginConfig | None = None) -> None:
        super().__init__(config, gateway, plugin)
        if config.heartbeat_seconds <= 0:
            raise ValueError("heartbeat_seconds must be > 0")
        self.manager = McpManager.of(gateway)

    async def handle(self, ex: Exchange, next: Next) -> Reply:
        body = ex.body
        if (
            ex.endpoint != "chat"
            or not isinstance(body, dict)
            or body.get("n") not in (None, 1)
            or body.get("tool_choice") == "none"
            or not self.manager.links
        ):
            return await next(ex)
        index = await self.manager.settled_index()
        if not index.tools:
            return await next(ex)
        own = body.get("tools")
        own = own if isinstance(own, list) else []
        taken = {_tool_name(t) for t in own}
        offered = {ref.exposed: ref for ref in index.tools if ref.exposed not in taken}
        if not offered:
            return await next(ex)
        body["tools"] = [*own, *(ref.spec for ref in offered.values())]
        # The loop reads replies in OpenAI shape: no native Anthropic pass-through on this request.
        ex.metadata[NATIVE_OFF] = True
        loop = ToolLoop(self.manager, ex, next, offered, self.config.heartbeat_seconds)
        return await (loop.run_stream() if ex.stream else loop.run())

    def health(self) -> dict[str, Any] | None:
        return None  # the servers are reported under `mcp_servers`


def _tool_name(tool: Any) -> str | None:
    function = tool.get("function") if isinstance(tool, dict) else None
    return function.get("name") if isinstance(function, dict) else None


def place_mcp_filter(config: GatewayConfig, gateway: Gateway, filters: list[Filter]) -> list[Filter]:
    """Add the filter first (after gateway auth) when servers are configured and it is not listed,
    so every tool turn passes through the guardrail, budget and other filters after it."""
    if not config.mcp_servers:
        return filters
    McpManager.of(gateway)
    if any(f.name == "mcp" for f in filters):
        return filters
    at = 0
    while at < len(filters) and filters[at].name == "gateway-auth":
        at += 1
    return [*filters[:at], McpFilter(McpFilter.Config(), gateway), *filters[at:]]


CHAIN_HOOKS.append(place_mcp_filter)
