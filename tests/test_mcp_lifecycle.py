"""MCP servers over the gateway's life: down at startup, restarts, tool-list changes, name
clashes, reloads and shutdown — seen through /health, /ready, /metrics and real requests."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import openai
import pytest

from ferro_proxy.config import ConfigError, config_from_data
from ferro_proxy.server import Running
from tests.fakes.mcp_model import ToolModel
from tests.fakes.mcp_servers import ToolServer, eventually, free_port

USER = [{"role": "user", "content": "Weather in Rome?"}]
SECRET = "s3cret-mcp-token-123456"


@pytest.fixture
async def model() -> AsyncIterator[ToolModel]:
    fake = await ToolModel(wants=[("get_weather", {"city": "Rome"})]).start()
    yield fake
    await fake.stop()


def env_for(model: ToolModel) -> dict[str, str]:
    return {"OPENAI_API_KEY": "sk-test-upstream-key", "OPENAI_BASE_URL": model.base_url}


async def ask(running: Running) -> str:
    async with openai.AsyncOpenAI(
        api_key="sk-placeholder", base_url=running.proxy_url + "/v1", max_retries=0
    ) as client:
        resp = await client.chat.completions.create(model="gpt-4o-mini", messages=USER)
    return resp.choices[0].message.content or ""


async def admin(running: Running, path: str) -> tuple[int, Any]:
    async with aiohttp.ClientSession() as http, http.get(running.admin_url + path) as resp:
        body = await resp.json() if path != "/metrics" else await resp.text()
        return resp.status, body


async def server_status(running: Running, name: str = "tools") -> str:
    _, report = await admin(running, "/health")
    return report["mcp_servers"][name]["status"]


async def _is(running: Running, status: str) -> bool:
    return await server_status(running) == status


async def test_server_down_at_startup_becomes_usable_once_up(gateway_factory, model, caplog) -> None:
    port = free_port()
    entry = {
        "name": "tools",
        "url": f"http://127.0.0.1:{port}/mcp",
        "headers": {"Authorization": f"Bearer {SECRET}"},
        "required": True,
    }
    running = await gateway_factory({"mcp_servers": [entry]}, env=env_for(model))
    await eventually(lambda: _is(running, "down"), what="the server reported down")

    status, ready = await admin(running, "/ready")
    assert status == 503 and any("tools" in r for r in ready["reasons"])
    _, report = await admin(running, "/health")
    # the public report names a category, never the error text (that needs a read_only key)
    assert report["status"] == "degraded" and report["mcp_servers"]["tools"]["error"] == "unreachable"
    assert "error_detail" not in report["mcp_servers"]["tools"]
    _, metrics = await admin(running, "/metrics")
    assert 'ferro_mcp_server_up{server="tools"} 0.0' in metrics
    assert await ask(running) == "No tools were needed."  # nothing offered while it is down
    assert model.offered() == []

    server = await ToolServer(port=port).start()
    try:
        await eventually(lambda: _is(running, "up"), what="the server reported up")
        status, _ = await admin(running, "/ready")
        assert status == 200
        _, metrics = await admin(running, "/metrics")
        assert 'ferro_mcp_server_up{server="tools"} 1.0' in metrics
        assert await ask(running) == "The tools said: Sunny and 21 C in Rome"
        assert server.methods("POST")[0].headers["authorization"] == f"Bearer {SECRET}"
    finally:
        await server.stop()
    _, report = await admin(running, "/health")
    leaks = [str(report), metrics, caplog.text]
    assert not any(SECRET in text for text in leaks)


async def test_server_restart_is_survived(gateway_factory, model) -> None:
    server = await ToolServer().start()
    try:
        entry = {"name": "tools", "url": server.url}
        running = await gateway_factory({"mcp_servers": [entry]}, env=env_for(model))
        assert await ask(running) == "The tools said: Sunny and 21 C in Rome"
        first_session = server.methods("POST")[-1].headers["mcp-session-id"]

        await server.restart()  # same port, every session forgotten
        await eventually(lambda: _is(running, "up"), what="the server back up")
        model.bodies.clear()
        assert await ask(running) == "The tools said: Sunny and 21 C in Rome"
        last_session = server.methods("POST")[-1].headers["mcp-session-id"]
        assert last_session != first_session
        assert len(server.calls) == 2  # one call before the restart, one after
    finally:
        await server.stop()


async def test_tool_list_change_is_picked_up(gateway_factory, model) -> None:
    server = await ToolServer().start()
    try:
        model.wants = [("add_stock_tool", {})]
        running = await gateway_factory(
            {"mcp_servers": [{"name": "tools", "url": server.url}]}, env=env_for(model)
        )
        await ask(running)
        assert "stock_price" not in model.offered(0)

        async def listed() -> bool:
            _, report = await admin(running, "/health")
            return "stock_price" in report["mcp_servers"]["tools"]["tools"]

        await eventually(listed, what="stock_price in the tool list")
        await ask(running)
        assert "stock_price" in model.offered()
    finally:
        await server.stop()


async def test_name_clash_first_server_wins_with_one_log_line(gateway_factory, model, caplog) -> None:
    first = await ToolServer(name="first").start()
    second = await ToolServer(name="second").start()
    caplog.set_level(logging.WARNING, logger="ferro_proxy.mcp")
    try:
        servers = [
            {"name": "first", "url": first.url, "allowed_tools": ["get_weather"]},
            {"name": "second", "url": second.url, "allowed_tools": ["get_weather", "search"]},
        ]
        running = await gateway_factory({"mcp_servers": servers}, env=env_for(model))

        async def both_up() -> bool:
            return await server_status(running, "first") == await server_status(running, "second") == "up"

        await eventually(both_up, what="both servers up")
        assert await ask(running) == "The tools said: Sunny and 21 C in Rome"
        assert await ask(running) == "The tools said: Sunny and 21 C in Rome"
        assert model.offered(0) == ["get_weather", "search"]
        assert len(first.calls) == 2 and second.calls == []
        clashes = [r for r in caplog.records if "offered by servers first and second" in r.getMessage()]
        assert len(clashes) == 1 and "'get_weather'" in clashes[0].getMessage()
    finally:
        await first.stop()
        await second.stop()


async def test_reload_adds_and_removes_servers_and_shutdown_ends_sessions(gateway_factory, model) -> None:
    server = await ToolServer().start()
    try:
        running = await gateway_factory({}, env=env_for(model))
        assert await ask(running) == "No tools were needed."
        _, report = await admin(running, "/health")
        assert report["mcp_servers"] == {}

        with_server = config_from_data({"mcp_servers": [{"name": "tools", "url": server.url}]}, env={})
        await running.gateway.apply(with_server)
        assert await ask(running) == "The tools said: Sunny and 21 C in Rome"

        await running.gateway.apply(config_from_data({}, env={}))
        assert server.methods("DELETE"), "a removed server's session is ended"
        model.bodies.clear()
        assert await ask(running) == "No tools were needed." and model.offered() == []

        await running.gateway.apply(with_server)
        assert await ask(running) == "The tools said: Sunny and 21 C in Rome"
        deletes = len(server.methods("DELETE"))
        await running.gateway.close()
        assert len(server.methods("DELETE")) == deletes + 1, "shutdown ends the session"
    finally:
        await server.stop()


async def test_mcp_plugin_entry_is_validated_and_placed_where_listed(gateway_factory, model) -> None:
    bad = {"plugins": [{"name": "mcp", "config": {"heartbeat_seconds": 0}}]}
    with pytest.raises(ConfigError) as err:
        await gateway_factory(bad, env=env_for(model))
    assert "plugins[0].config: heartbeat_seconds must be > 0" in str(err.value)

    server = await ToolServer().start()
    try:
        config = {"plugins": [{"name": "mcp"}], "mcp_servers": [{"name": "tools", "url": server.url}]}
        running = await gateway_factory(config, env=env_for(model))
        filters = running.gateway.runtime.chain.filters
        assert [f.name for f in filters].count("mcp") == 1
        assert await ask(running) == "The tools said: Sunny and 21 C in Rome"
    finally:
        await server.stop()
