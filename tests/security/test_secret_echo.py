"""No secret leaves the gateway, even when an upstream quotes back what it was sent.

One hostile upstream speaks the wire format of every provider family that can be pointed at
loopback (OpenAI, Groq, Mistral, Together, Azure OpenAI, Anthropic, Gemini, Cohere) and
echoes the credentials it received (Authorization, x-api-key, api-key, x-goog-api-key,
`?key=`, a configured custom header) in error bodies (401 and 400), in response headers, in
answer content and in mid-stream error events. Behind it: a gateway holding a key per
provider and used with a gateway key, and a gateway whose client brings its own key. Every
readable place is then searched for every secret: the client's bodies and headers, the JSON
log lines, the request-log rows (`GET /admin/logs` with a read_only key), every `/admin/*`
view, `/metrics` and `/health` on both ports. Not one is found.
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
import secrets
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from ferro_proxy.jsonlog import JsonFormatter
from ferro_proxy.server import Running


def _rand(prefix: str = "", n: int = 20) -> str:
    return prefix + secrets.token_hex(n)[:n]


# Distinctive random values; most deliberately match no credential pattern.
KEYS = {
    "openai": _rand("oai-"),
    "groq": "gsk_" + secrets.token_hex(16),
    "mistral": secrets.token_hex(16),  # 32 hex chars, looks like nothing in particular
    "azure-openai": secrets.token_hex(16),
    "anthropic": _rand("ant-"),
    "gemini": _rand("gem"),
    "cohere": _rand("co"),
}
ORG_HEADER = _rand("org-")  # providers.openai.headers.X-Org-Token
BYO_KEY = _rand("byo-")  # brought by the client to a provider configured without a key
BOOT = _rand("boot-")
BOOT_RO = _rand("boot-ro-")
MCP_TOKEN = _rand("mcp-")
MCP_URL_TOKEN = _rand("mcpq-")
MODELS = {
    "openai": "openai/gpt-4o-mini",
    "groq": "groq/llama-3.3-70b-versatile",
    "mistral": "mistral/mistral-small-latest",
    "azure-openai": "azure-openai/my-deploy",
    "anthropic": "anthropic/claude-3-5-haiku-latest",
    "gemini": "gemini/gemini-2.0-flash",
    "cohere": "cohere/command-r",
}
ECHO_HEADER = "x-echo-credentials"
_CREDENTIAL_HEADERS = ("Authorization", "x-api-key", "api-key", "x-goog-api-key", "X-Org-Token")


class EchoUpstream:
    """Every family's endpoints; `mode` decides the answer: error401 | error400 | ok | stream."""

    def __init__(self) -> None:
        self.mode = "ok"
        self.seen: list[str] = []  # every credential value received
        self.runner: web.AppRunner | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> EchoUpstream:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self.handle)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        return self

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()

    def credentials(self, request: web.Request) -> str:
        found = [request.headers[h] for h in _CREDENTIAL_HEADERS if request.headers.get(h)]
        if request.query.get("key"):
            found.append(request.query["key"])
        self.seen.extend(found)
        return " | ".join(found)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        creds = self.credentials(request)
        headers = {ECHO_HEADER: creds}
        path = request.path
        family = (
            "anthropic"
            if path.endswith("/messages")
            else "gemini"
            if "/models/" in path and ":" in path
            else "cohere"
            if path.startswith("/v2/")
            else "openai"
            if path.endswith("/chat/completions")
            else "passthrough"
        )
        if family == "passthrough":
            return web.json_response({"object": "echo", "you_sent": creds}, headers=headers)
        if self.mode.startswith("error"):
            status = int(self.mode[5:])
            message = f"Incorrect API key provided: {creds}"
            body: dict[str, Any] = (
                {"type": "error", "error": {"type": "authentication_error", "message": message}}
                if family == "anthropic"
                else {"message": message}
                if family == "cohere"
                else {"error": {"message": message, "type": "invalid_request_error", "code": creds}}
            )
            return web.json_response(body, status=status, headers=headers)
        if self.mode == "ok":
            return web.json_response(_answer(family, f"you sent {creds}"), headers=headers)
        response = web.StreamResponse(headers={**headers, "Content-Type": "text/event-stream"})
        await response.prepare(request)
        for event in _stream(family, creds):
            await response.write(event.encode())
        await response.write_eof()
        return response


def _answer(family: str, text: str) -> dict[str, Any]:
    if family == "anthropic":
        return {
            "id": "msg_1",
            "type": "message",
            "role": "assistant",
            "model": "claude-3-5-haiku-latest",
            "content": [{"type": "text", "text": text}],
            "stop_reason": "end_turn",
            "usage": {"input_tokens": 3, "output_tokens": 3},
        }
    if family == "gemini":
        return {
            "candidates": [
                {"content": {"role": "model", "parts": [{"text": text}]}, "finishReason": "STOP", "index": 0}
            ],
            "usageMetadata": {"promptTokenCount": 3, "candidatesTokenCount": 3, "totalTokenCount": 6},
        }
    if family == "cohere":
        return {
            "id": "co1",
            "message": {"role": "assistant", "content": [{"type": "text", "text": text}]},
            "finish_reason": "COMPLETE",
            "usage": {"billed_units": {"input_tokens": 3, "output_tokens": 3}},
        }
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": 0,
        "model": "m",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 3, "completion_tokens": 3, "total_tokens": 6},
    }


def _sse(data: dict[str, Any], name: str | None = None) -> str:
    return (f"event: {name}\n" if name else "") + f"data: {json.dumps(data)}\n\n"


def _stream(family: str, creds: str) -> list[str]:
    """Content that quotes the credentials, then a mid-stream error that quotes them again."""
    said = f"you sent {creds}"
    failed = f"stream failed, bad key {creds}"
    if family == "anthropic":
        return [
            _sse(
                {
                    "type": "message_start",
                    "message": {
                        "id": "msg_1",
                        "type": "message",
                        "role": "assistant",
                        "model": "claude-3-5-haiku-latest",
                        "content": [],
                        "usage": {"input_tokens": 3, "output_tokens": 0},
                    },
                },
                "message_start",
            ),
            _sse(
                {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
                "content_block_start",
            ),
            _sse(
                {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": said}},
                "content_block_delta",
            ),
            _sse({"type": "error", "error": {"type": "overloaded_error", "message": failed}}, "error"),
        ]
    if family == "gemini":
        return [
            _sse({"candidates": [{"content": {"role": "model", "parts": [{"text": said}]}, "index": 0}]}),
            _sse({"error": {"code": 500, "message": failed, "status": "INTERNAL"}}),
        ]
    if family == "cohere":  # Cohere has no error event: content, then the stream just stops
        return [
            _sse({"type": "message-start", "id": "co1"}, "message-start"),
            _sse(
                {"type": "content-delta", "index": 0, "delta": {"message": {"content": {"text": said}}}},
                "content-delta",
            ),
        ]
    chunk = {
        "id": "chatcmpl-1",
        "object": "chat.completion.chunk",
        "created": 0,
        "model": "m",
        "choices": [{"index": 0, "delta": {"content": said}, "finish_reason": None}],
    }
    return [_sse(chunk), _sse({"error": {"message": failed, "type": "server_error", "code": creds}})]


class EchoMcp:
    """An MCP server that refuses every call, quoting the token it was sent."""

    async def handle(self, request: web.Request) -> web.Response:
        quoted = f"bad token {request.query.get('token')} / {request.headers.get('X-MCP-Token')}"
        return web.json_response({"error": {"message": quoted}}, status=401)

    async def start(self) -> EchoMcp:
        app = web.Application()
        app.router.add_route("*", "/mcp", self.handle)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        return self


@pytest.fixture
async def echo() -> AsyncIterator[EchoUpstream]:
    fake = await EchoUpstream().start()
    yield fake
    await fake.stop()


@pytest.fixture
async def echo_mcp() -> AsyncIterator[EchoMcp]:
    fake = await EchoMcp().start()
    yield fake
    await fake.runner.cleanup()


@pytest.fixture
def log_lines() -> AsyncIterator[io.StringIO]:
    """Every log line the gateway writes, through its own JSON formatter, at DEBUG."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    yield stream
    root.removeHandler(handler)
    root.setLevel(level)


def _plugins() -> list[dict[str, Any]]:
    return [{"name": "request-logger", "config": {"persist": True, "flush_interval": 0.01}}]


class Reader:
    """Collects every text a caller can read, and knows how to reach the gateway's views."""

    def __init__(self, session: aiohttp.ClientSession) -> None:
        self.session = session
        self.texts: list[tuple[str, str]] = []

    async def read(
        self, method: str, url: str, *, json_body: Any = None, headers: dict[str, str] | None = None
    ) -> tuple[int, str, dict[str, str]]:
        async with self.session.request(method, url, json=json_body, headers=headers) as resp:
            text = (await resp.read()).decode("utf-8", "replace")
            resp_headers = dict(resp.headers)
        self.texts.append((f"{method} {url} body", text))
        self.texts.append((f"{method} {url} headers", json.dumps(resp_headers)))
        return resp.status, text, resp_headers

    async def views(self, gw: Running, read_only_key: str) -> None:
        auth = {"Authorization": f"Bearer {read_only_key}"}
        for path in (
            "/admin/logs?limit=1000",
            "/admin/logs/stats",
            "/admin/dashboard",
            "/admin/keys",
            "/admin/keys/usage",
            "/admin/providers",
            "/admin/health",
            "/admin/config",
            "/admin/config/history",
            "/admin/audit",
        ):
            status, text, _ = await self.read("GET", gw.admin_url + path, headers=auth)
            assert status == 200, (path, status, text)
        for base in (gw.proxy_url, gw.admin_url):
            await self.read("GET", base + "/health")
            await self.read("GET", base + "/health", headers=auth)
        await self.read("GET", gw.admin_url + "/metrics")


def _assert_nothing_found(places: list[tuple[str, str]], wanted: dict[str, str]) -> None:
    found = [(where, name) for where, text in places for name, value in wanted.items() if value in text]
    assert found == [], f"secrets found: {found}"


async def _rows(reader: Reader, gw: Running, key: str, count: int) -> list[dict[str, Any]]:
    for _ in range(200):
        async with reader.session.get(
            gw.admin_url + "/admin/logs?limit=1000", headers={"Authorization": f"Bearer {key}"}
        ) as resp:
            data = await resp.json()
        rows = data.get("data") or data.get("logs") or data.get("items") or []
        if len(rows) >= count:
            return rows
        await asyncio.sleep(0.02)
    raise AssertionError(f"expected {count} request-log rows, got {data}")


async def _chat(
    reader: Reader, gw: Running, model: str, auth: dict[str, str], stream: bool
) -> tuple[int, str]:
    body = {"model": model, "messages": [{"role": "user", "content": "hi"}], "stream": stream}
    status, text, _ = await reader.read(
        "POST", gw.proxy_url + "/v1/chat/completions", json_body=body, headers=auth
    )
    return status, text


async def test_no_provider_key_gateway_key_or_admin_key_is_readable_anywhere(
    gateway_factory, echo, echo_mcp, log_lines, capsys
):
    env = {
        "OPENAI_API_KEY": KEYS["openai"],
        "OPENAI_BASE_URL": echo.url + "/v1",
        "GROQ_API_KEY": KEYS["groq"],
        "GROQ_BASE_URL": echo.url + "/v1",
        "MISTRAL_API_KEY": KEYS["mistral"],
        "MISTRAL_BASE_URL": echo.url + "/v1",
        "AZURE_OPENAI_API_KEY": KEYS["azure-openai"],
        "AZURE_OPENAI_ENDPOINT": echo.url,
        "ANTHROPIC_API_KEY": KEYS["anthropic"],
        "ANTHROPIC_BASE_URL": echo.url,
        "GEMINI_API_KEY": KEYS["gemini"],
        "GEMINI_BASE_URL": echo.url,
        "COHERE_API_KEY": KEYS["cohere"],
        "COHERE_BASE_URL": echo.url,
        "ADMIN_BOOTSTRAP_ENABLED": "true",
        "ADMIN_BOOTSTRAP_KEY": BOOT,
        "ADMIN_BOOTSTRAP_READ_ONLY_KEY": BOOT_RO,
        "API_KEY_CACHE_SECONDS": "0",
    }
    config = {
        "providers": {"openai": {"headers": {"X-Org-Token": ORG_HEADER}}},
        "plugins": _plugins(),
        "mcp_servers": [
            {
                "name": "echo",
                "url": f"http://127.0.0.1:{echo_mcp.port}/mcp?token={MCP_URL_TOKEN}",
                "headers": {"X-MCP-Token": MCP_TOKEN},
            }
        ],
    }
    gw = await gateway_factory(config, env=env)
    async with aiohttp.ClientSession() as session:
        reader = Reader(session)
        boot = {"Authorization": f"Bearer {BOOT}"}
        async with session.post(
            gw.admin_url + "/admin/keys", json={"name": "app", "scopes": ["proxy"]}, headers=boot
        ) as resp:
            gateway_key = (await resp.json())["key"]  # the creator's own answer: not a readable place
        async with session.post(
            gw.admin_url + "/admin/keys", json={"name": "viewer", "scopes": ["read_only"]}, headers=boot
        ) as resp:
            read_only_key = (await resp.json())["key"]
        auth = {"Authorization": f"Bearer {gateway_key}"}
        requests = 0
        for provider, model in MODELS.items():
            for mode, stream in (("error401", False), ("error400", True), ("ok", False), ("stream", True)):
                echo.mode = mode
                status, text = await _chat(reader, gw, model, auth, stream)
                requests += 1
                if mode == "error401":
                    assert status == 502 and "[REDACTED]" in text, (provider, status, text)
                elif mode == "error400":
                    assert status == 400 and "[REDACTED]" in text, (provider, status, text)
                elif mode == "ok":
                    assert status == 200 and "you sent " in text and "[REDACTED]" in text, (provider, text)
                else:
                    assert "[REDACTED]" in text and "error" in text, (provider, text)
        # the Messages ingress, answered natively by Anthropic (events passed through as they are)
        for mode, stream in (("error401", False), ("ok", False), ("stream", True)):
            echo.mode = mode
            body = {
                "model": "claude-3-5-haiku-latest",
                "max_tokens": 10,
                "messages": [{"role": "user", "content": "hi"}],
                "stream": stream,
            }
            status, text, _ = await reader.read(
                "POST",
                gw.proxy_url + "/v1/messages",
                json_body=body,
                headers={**auth, "anthropic-version": "2023-06-01"},
            )
            requests += 1
            assert "[REDACTED]" in text, (mode, status, text)
        # pass-through: the upstream's answer headers and body quote the credentials
        for provider in ("openai", "groq", "mistral"):
            status, text, headers = await reader.read(
                "POST", gw.proxy_url + "/v1/echo/check", json_body={"model": MODELS[provider]}, headers=auth
            )
            requests += 1
            assert status == 200, (provider, status, text)
            assert headers.get(ECHO_HEADER, "").startswith("Bearer [REDACTED]"), headers
            assert "[REDACTED]" in text, text
        await reader.read("GET", gw.proxy_url + "/v1/models", headers=auth)

        assert set(KEYS.values()) <= {s.removeprefix("Bearer ") for s in echo.seen}, "every key was sent"
        rows = await _rows(reader, gw, read_only_key, requests)
        assert any("[REDACTED]" in (r.get("error") or "") for r in rows), rows
        await reader.views(gw, read_only_key)

    wanted = {
        **{f"{p} key": k for p, k in KEYS.items()},
        "openai header": ORG_HEADER,
        "gateway key": gateway_key,
        "read_only key": read_only_key,
        "bootstrap admin key": BOOT,
        "bootstrap read_only key": BOOT_RO,
        "mcp header token": MCP_TOKEN,
        "mcp url token": MCP_URL_TOKEN,
    }
    captured = capsys.readouterr()
    places = [
        *reader.texts,
        *(("log line", line) for line in log_lines.getvalue().splitlines()),
        ("stdout", captured.out),
        ("stderr", captured.err),
    ]
    assert len(log_lines.getvalue().splitlines()) >= requests, "the JSON log saw the requests"
    _assert_nothing_found(places, wanted)


async def test_a_clients_own_key_is_never_readable(gateway_factory, echo, log_lines, capsys):
    """A provider configured without a key gets the client's key (bring your own key); the
    upstream quotes it in errors, headers and streams; no one reads it back."""
    env = {"ADMIN_BOOTSTRAP_ENABLED": "true", "ADMIN_BOOTSTRAP_READ_ONLY_KEY": BOOT_RO}
    config = {"providers": {"together": {"base_url": echo.url + "/v1"}}, "plugins": _plugins()}
    gw = await gateway_factory(config, env=env)
    auth = {"Authorization": f"Bearer {BYO_KEY}"}
    async with aiohttp.ClientSession() as session:
        reader = Reader(session)
        requests = 0
        for mode, stream in (("error401", False), ("error400", True), ("ok", False), ("stream", True)):
            echo.mode = mode
            status, text = await _chat(reader, gw, "together/meta-llama-3", auth, stream)
            requests += 1
            assert "[REDACTED]" in text, (mode, status, text)
        status, text, headers = await reader.read(
            "POST", gw.proxy_url + "/v1/echo/check", json_body={"model": "together/x"}, headers=auth
        )
        requests += 1
        assert status == 200 and headers.get(ECHO_HEADER) == "Bearer [REDACTED]", (status, headers)
        assert echo.seen and all(s == f"Bearer {BYO_KEY}" for s in echo.seen), echo.seen
        await _rows(reader, gw, BOOT_RO, requests)
        await reader.views(gw, BOOT_RO)
    captured = capsys.readouterr()
    places = [
        *reader.texts,
        *(("log line", line) for line in log_lines.getvalue().splitlines()),
        ("stdout", captured.out),
        ("stderr", captured.err),
    ]
    _assert_nothing_found(places, {"byo key": BYO_KEY, "bootstrap read_only key": BOOT_RO})
