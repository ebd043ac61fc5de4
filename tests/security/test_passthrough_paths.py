"""Pass-through paths never leave the provider's base path.

A loopback "detector" upstream records every raw path it receives; the gateway's openai
target points at `http://127.0.0.1:<port>/v1`. Hostile request targets are written on a raw
socket (no client-side normalisation) and must all be refused with 400 `invalid_proxy_path`
before anything reaches the detector; ordinary pass-through calls still arrive verbatim.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp import web
from yarl import URL

from ferro_proxy.errors import GatewayError
from ferro_proxy.proxy_path import upstream_url

PROVIDER_KEY = "sk-detector-provider-key"


class Detector:
    """An upstream that answers 200 to anything and records the raw target it was sent."""

    def __init__(self) -> None:
        self.seen: list[str] = []
        self.keys: list[str] = []
        self._runner: web.ServerRunner | None = None
        self.port = 0

    async def _handle(self, request: web.BaseRequest) -> web.Response:
        self.seen.append(request.raw_path)
        self.keys.append(request.headers.get("Authorization", ""))
        return web.json_response({"object": "detector", "raw_path": request.raw_path})

    async def start(self) -> Detector:
        self._runner = web.ServerRunner(web.Server(self._handle), access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


@pytest.fixture
async def detector() -> AsyncIterator[Detector]:
    d = await Detector().start()
    yield d
    await d.stop()


@pytest.fixture
async def proxy(gateway_factory, detector: Detector):
    return await gateway_factory(
        {
            "targets": [{"virtual_key": "openai"}],
            "providers": {
                "openai": {"api_key": PROVIDER_KEY, "base_url": f"http://127.0.0.1:{detector.port}/v1"}
            },
        }
    )


async def raw_request(proxy_url: str, method: str, target: bytes) -> tuple[int, dict[str, Any] | None]:
    """Write the request line byte for byte; (status, JSON body or None)."""
    url = URL(proxy_url)
    reader, writer = await asyncio.open_connection(url.host, url.port)
    try:
        writer.write(
            method.encode() + b" " + target + b" HTTP/1.1\r\n"
            b"Host: 127.0.0.1\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        )
        await writer.drain()
        data = await asyncio.wait_for(reader.read(), 10)
    finally:
        writer.close()
    head, _, body = data.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    try:
        return status, orjson.loads(body)
    except orjson.JSONDecodeError:
        return status, None


HOSTILE = [
    "/v1/../../x",
    "/v1/%2e%2e/%2e%2e/x",
    "/v1/%2E%2E/%2E%2E/x",
    "/v1/%2E%2e/%2e%2E/x",
    "/v1/..%2f..%2fx",
    "/v1/..%2F..%2Fx",
    "/v1/%2e%2e%2f%2e%2e%2fx",
    "/v1/.%2e/.%2e/x",
    "/v1/%2e./%2e./x",
    "/v1/%252e%252e/%252e%252e/x",
    "/v1/%252E%252E%252F%252E%252E%252Fx",
    "/v1/%25252e%25252e/x",
    "/v1/%2525252e%2525252e/x",
    "/v1/./x",
    "/v1/%2e/x",
    "/v1/files/..",
    "/v1/files/%2e%2e",
    "/v1/files/../../../admin",
    "/v1/..%20/x",
    "/v1/..\\..\\x",
    "/v1/..%5c..%5cx",
    "/v1/..%5C..%5Cx",
    "/v1/%255c%255c/x",
    "/v1//x",
    "/v1//127.0.0.1:9/x",
    "/v1/http://evil.example/steal",
    "/v1/%2f%2fevil.example/x",
    "/v1/files%2f%2fx",
    "/v1/a%00b",
    "/v1/%00/../x",
    "/v1/a%0d%0aHost:%20evil.example",
    "/v1/a%09b",
    "/v1/a%7f",
    "/v1/a%c2%85",
    "/v1/%ff%fe",
    "/v1/%c0%ae%c0%ae/x",
    "/v1/a%2",
    "/v1/a%zz",
    "/v1/..;/..;/x",
    "/v1/files;jsessionid=1/../../x",
    "/v1/%3b/x",
    "/v1/x#/../../y",
    "/v1/x?q=1#frag",
    "/%761/../x",
    "http://evil.example/v1/x",
    "/v1/models/%2e%2e/%2e%2e/x",
    "/v1/models/..%2f..%2fadmin",
    "/v1/messages/..%2f..%2fx",
    "/v1/fine_tuning/jobs/%2e%2e%2f%2e%2e%2f%2e%2e%2fmetadata?limit=1",
]


async def test_hostile_paths_are_refused_before_any_upstream_call(proxy, detector):
    failures = []
    for target in HOSTILE:
        for method in ("GET", "POST"):
            status, body = await raw_request(proxy.proxy_url, method, target.encode())
            code = (body or {}).get("error", {}).get("code")
            kind = (body or {}).get("error", {}).get("type")
            if (status, code, kind) != (400, "invalid_proxy_path", "invalid_request_error"):
                failures.append((method, target, status, body))
    assert failures == []
    assert detector.seen == []


@pytest.mark.parametrize("target", [b"/v1/a\x7fb", b"/v1/\xc3\xa9", b"/v1/a\tb/../../x"])
async def test_raw_bytes_in_the_request_line_never_reach_the_upstream(proxy, detector, target):
    status, _ = await raw_request(proxy.proxy_url, "GET", target)
    assert status == 400
    assert detector.seen == []


LEGITIMATE = [
    ("GET", "/v1/files/file-abc"),
    ("GET", "/v1/fine_tuning/jobs?limit=2"),
    ("POST", "/v1/vector_stores/vs_1/files"),
    ("GET", "/v1/models/ft:gpt-4o-mini:acme::abc123"),
    ("GET", "/v1/files?purpose=a%23b&after=file-1"),
    ("GET", "/v1/files/name%20with%20spaces"),
    ("DELETE", "/v1/vector_stores/vs_1/"),
]


async def test_ordinary_pass_through_paths_arrive_verbatim(proxy, detector):
    async with aiohttp.ClientSession() as session:
        for method, target in LEGITIMATE:
            url = URL(proxy.proxy_url + target, encoded=True)
            async with session.request(method, url) as resp:
                assert resp.status == 200, (target, await resp.text())
                assert (await resp.json())["raw_path"] == target
    assert detector.seen == [t for _, t in LEGITIMATE]
    # the query keeps its encoding: "%23" is data for the upstream, never a fragment
    assert "/v1/files?purpose=a%23b&after=file-1" in detector.seen
    assert detector.keys == [f"Bearer {PROVIDER_KEY}"] * len(LEGITIMATE)


@pytest.mark.parametrize(
    "sub_target",
    [
        "/../x",
        "/%2e%2e/x",
        "/a/%2E%2e/%2e%2E/%2e%2e/x",
        "//evil.example/x",
        "/x#y",
        "@evil.example/x",
        "x",
        "/a\\b",
    ],
)
def test_the_provider_refuses_urls_that_leave_its_base(sub_target):
    """Defence in depth: the URL a provider builds is checked again, whoever made the path."""
    with pytest.raises(GatewayError) as caught:
        upstream_url("http://127.0.0.1:9/v1", sub_target)
    assert caught.value.status == 400 and caught.value.code == "invalid_proxy_path"


def test_the_provider_keeps_the_base_query_and_the_clients_query():
    url = upstream_url("http://127.0.0.1:9/openai?api-version=1", "/files/f%2Fa?limit=2")
    assert str(url) == "http://127.0.0.1:9/openai/files/f%2Fa?api-version=1&limit=2"
