"""Health without secrets, and config views that hide every header value and URL secret.

A hostile caller with no key reads `/health` on both listeners; a read_only key reads
`/admin/config`, its history and `/admin/providers`. Neither finds a credential the gateway
holds for an MCP server or a provider. The admin round trip (GET, edit, send back with
`[REDACTED]` placeholders) keeps every secret where it was.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from ferro_proxy.server import Running
from tests.fakes.mcp_servers import eventually, free_port
from tests.test_admin import BOOT, BOOT_RO, Admin, admin_env

URL_TOKEN = "SECRET123-url-token"
HEADER_TOKEN = "SECRET456-header-token"
ECHO_URL_TOKEN = "SECRET789-echo-url"
ECHO_HEADER_TOKEN = "SECRET000-echo-header"
URL_PASSWORD = "SECRETpw-userinfo"
GOOG_KEY = "SECRETgoog-AIzaNotAPattern"
TEAM = "SECRETteam-blue"
GROQ_URL_KEY = "SECRETgroq-query"
ALL_SECRETS = (
    URL_TOKEN,
    HEADER_TOKEN,
    ECHO_URL_TOKEN,
    ECHO_HEADER_TOKEN,
    URL_PASSWORD,
    GOOG_KEY,
    TEAM,
    GROQ_URL_KEY,
)


class EchoingMcp:
    """An MCP endpoint that refuses every call with 401 and quotes the credentials it got."""

    def __init__(self) -> None:
        self.runner: web.AppRunner | None = None
        self.port = 0

    async def handle(self, request: web.Request) -> web.Response:
        quoted = f"bad token {request.query.get('token')} and header {request.headers.get('X-MCP-Token')}"
        return web.json_response({"error": {"message": quoted}}, status=401)

    async def start(self) -> EchoingMcp:
        app = web.Application()
        app.router.add_route("*", "/mcp", self.handle)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        self.port = self.runner.addresses[0][1]
        return self

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()


@pytest.fixture
async def echo_mcp() -> AsyncIterator[EchoingMcp]:
    server = await EchoingMcp().start()
    yield server
    await server.stop()


def gateway_config(fake_url: str, echo_port: int) -> dict[str, Any]:
    return {
        "providers": {
            "openai": {"base_url": fake_url, "headers": {"x-goog-api-key": GOOG_KEY, "X-Team": TEAM}},
            "groq": {
                "api_key": "gsk_test",
                "base_url": f"http://127.0.0.1:1/openai/v1?api-key={GROQ_URL_KEY}",
            },
        },
        "mcp_servers": [
            {
                "name": "dead",
                "url": f"http://ops:{URL_PASSWORD}@127.0.0.1:{free_port()}/mcp?token={URL_TOKEN}",
                "headers": {"X-MCP-Token": HEADER_TOKEN},
            },
            {
                "name": "echo",
                "url": f"http://127.0.0.1:{echo_port}/mcp?token={ECHO_URL_TOKEN}",
                "headers": {"X-MCP-Token": ECHO_HEADER_TOKEN},
            },
        ],
        "aliases": {"fast": "gpt-4o-mini"},
    }


async def get_text(url: str, key: str | None = None) -> tuple[int, str]:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    async with aiohttp.ClientSession() as http, http.get(url, headers=headers) as resp:
        return resp.status, await resp.text()


async def health(running: Running, base: str, key: str | None = None) -> dict[str, Any]:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    async with aiohttp.ClientSession() as http, http.get(base + "/health", headers=headers) as resp:
        return await resp.json()


def found_secrets(text: str) -> list[str]:
    return [s for s in ALL_SECRETS if s in text]


@pytest.fixture
async def running(gateway_factory, fake_openai, echo_mcp) -> Running:
    gw = await gateway_factory(
        gateway_config(fake_openai.base_url, echo_mcp.port), env=admin_env(fake_openai.base_url)
    )

    async def both_down() -> bool:
        servers = (await health(gw, gw.admin_url))["mcp_servers"]
        return all(servers[n]["status"] == "down" for n in ("dead", "echo"))

    await eventually(both_down, what="both MCP servers reported down")
    return gw


async def test_public_health_shows_categories_never_error_text(running, caplog) -> None:
    caplog.set_level(logging.DEBUG)
    admin = Admin(running.admin_url, BOOT)
    proxy_key = (await admin.create_key("app", ["proxy"]))["key"]
    for base in (running.proxy_url, running.admin_url):
        for key in (None, "not-a-gateway-key", proxy_key):
            status, text = await get_text(base + "/health", key)
            assert status == 200 and found_secrets(text) == [], (base, key)
            report = (await health(running, base, key))["mcp_servers"]
            assert report["dead"]["error"] == "unreachable", (base, key)
            assert report["echo"]["error"] == "auth_failed", (base, key)
            assert "error_detail" not in text and "HTTP 401" not in text and "?token" not in text
    assert found_secrets(caplog.text) == []  # the 'is down' warnings quote no echoed credential


async def test_detail_only_for_read_only_and_admin_keys_and_still_redacted(running) -> None:
    stored_ro = (await Admin(running.admin_url, BOOT).create_key("viewer", ["read_only"]))["key"]
    for base in (running.proxy_url, running.admin_url):
        for key in (BOOT_RO, BOOT, stored_ro):
            status, text = await get_text(base + "/health", key)
            assert status == 200 and found_secrets(text) == [], (base, key)
            servers = (await health(running, base, key))["mcp_servers"]
            assert servers["echo"]["error"] == "auth_failed"
            assert "HTTP 401" in servers["echo"]["error_detail"]
            assert "bad token [REDACTED] and header [REDACTED]" in servers["echo"]["error_detail"]
            assert "could not be reached" in servers["dead"]["error_detail"]
    status, text = await get_text(running.admin_url + "/admin/health", BOOT_RO)
    assert status == 200 and "HTTP 401" in text and found_secrets(text) == []


async def test_config_views_hide_every_header_value_and_url_secret(running) -> None:
    viewer = Admin(running.admin_url, BOOT_RO)
    views = [
        await viewer.ok("GET", "/admin/config"),
        await viewer.ok("GET", "/admin/config/history"),
        await viewer.ok("GET", "/admin/providers"),
    ]
    assert found_secrets(str(views)) == []
    config = views[0]["config"]
    openai_cfg = config["providers"]["openai"]
    assert openai_cfg["headers"] == {"x-goog-api-key": "[REDACTED]", "X-Team": "[REDACTED]"}
    assert config["providers"]["groq"]["base_url"] == "http://127.0.0.1:1/openai/v1?api-key=[REDACTED]"
    dead, echo = config["mcp_servers"]
    assert dead["url"].startswith("http://ops:[REDACTED]@127.0.0.1:") and dead["url"].endswith(
        "/mcp?token=[REDACTED]"
    )
    assert dead["headers"] == {"X-MCP-Token": "[REDACTED]"} and echo["headers"] == {
        "X-MCP-Token": "[REDACTED]"
    }
    assert config["aliases"] == {"fast": "gpt-4o-mini"}  # what is not secret stays readable


async def test_round_trip_keeps_each_secret_in_its_place(running, fake_openai) -> None:
    admin = Admin(running.admin_url, BOOT)
    document = (await admin.ok("GET", "/admin/config"))["config"]
    document["aliases"] = {"quick": "gpt-4o-mini"}
    document["mcp_servers"].reverse()  # placeholders follow the server's name, not its position
    document["providers"]["openai"]["headers"] = {"X-GOOG-API-KEY": "[REDACTED]", "x-team": "[REDACTED]"}
    await admin.ok("POST", "/admin/config", document)

    config = running.gateway.config
    servers = {s.name: s for s in config.mcp_servers}
    assert servers["echo"].headers == {"X-MCP-Token": ECHO_HEADER_TOKEN}
    assert servers["echo"].url.endswith(f"/mcp?token={ECHO_URL_TOKEN}")
    assert servers["dead"].headers == {"X-MCP-Token": HEADER_TOKEN}
    assert f"ops:{URL_PASSWORD}@" in servers["dead"].url and servers["dead"].url.endswith(
        f"?token={URL_TOKEN}"
    )
    assert config.providers["groq"].base_url.endswith(f"?api-key={GROQ_URL_KEY}")
    assert config.aliases == {"quick": "gpt-4o-mini"}

    # a PUT merge patch that leaves the placeholders in place keeps them too
    await admin.ok("PUT", "/admin/config", {"aliases": {"smart": "gpt-4o"}})
    async with aiohttp.ClientSession() as http:
        body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}
        async with http.post(running.proxy_url + "/v1/chat/completions", json=body) as resp:
            assert resp.status == 200
    sent = {k.lower(): v for k, v in fake_openai.requests[-1].headers.items()}
    assert sent["x-goog-api-key"] == GOOG_KEY and sent["x-team"] == TEAM


async def test_placeholders_cannot_move_a_secret_to_a_new_place(running) -> None:
    admin = Admin(running.admin_url, BOOT)
    shown = (await admin.ok("GET", "/admin/config"))["config"]

    moved_host = copy.deepcopy(shown)
    moved_host["mcp_servers"][1]["url"] = "http://127.0.0.1:9/mcp?token=[REDACTED]"
    new_server = copy.deepcopy(shown)
    new_server["mcp_servers"].append(
        {"name": "other", "url": "http://127.0.0.1:9/mcp", "headers": {"X-MCP-Token": "[REDACTED]"}}
    )
    new_header = copy.deepcopy(shown)
    new_header["providers"]["openai"]["headers"]["Authorization"] = "[REDACTED]"
    for document, where in (
        (moved_host, "mcp_servers[1].url"),
        (new_server, "mcp_servers[2].headers.X-MCP-Token"),
        (new_header, "providers.openai.headers.Authorization"),
    ):
        status, err = await admin.call("POST", "/admin/config", document)
        assert status == 400 and err["error"]["code"] == "invalid_config", where
        assert err["error"]["message"].startswith(where), err
    servers = {s.name: s for s in running.gateway.config.mcp_servers}
    assert set(servers) == {"dead", "echo"} and servers["echo"].url.startswith("http://127.0.0.1:")
    assert "Authorization" not in running.gateway.config.providers["openai"].headers
