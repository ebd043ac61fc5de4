"""Outbound fetches a client (image URLs) or an upstream (prediction, stream and output URLs)
names: a loopback detector counts what reaches it, a connect guard records every connection
the gateway's client sessions attempt (and refuses any to a non-loopback address, so nothing
leaves the machine), and the client always gets the same neutral 400."""

from __future__ import annotations

import asyncio
import base64
import ipaddress
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import aiohappyeyeballs.impl
import aiohttp
import orjson
import pytest
from aiohttp import web

from ferro_proxy import safe_fetch
from ferro_proxy.config import FetchConfig
from ferro_proxy.safe_fetch import SafeFetcher, is_public_address, same_origin
from tests.fakes.bedrock_upstream import FakeBedrock
from tests.fakes.gemini_upstream import TINY_PNG_B64
from tests.fakes.replicate_upstream import FakeReplicate

MODEL = "anthropic.claude-3-5-sonnet-20241022-v2:0"
PNG = base64.b64decode(TINY_PNG_B64)
NEUTRAL = {
    "error": {
        "message": "image could not be fetched",
        "type": "invalid_request_error",
        "code": "image_fetch_failed",
        "param": "messages",
    }
}
PUBLIC_LOOKING = "93.184.216.34"  # never contacted: the connect guard refuses it


# ------------------------------------------------------------------ harness


@dataclass
class Detector:
    """A loopback listener that records every request; serves a PNG, SSE, a redirect, a big
    body or a slow one depending on the path."""

    requests: list[tuple[str, str, dict[str, str]]] = field(default_factory=list)
    redirect_to: str = ""
    runner: web.AppRunner | None = None
    port: int = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> Detector:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self.handle)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", 0).start()
        self.port = self.runner.addresses[0][1]
        return self

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.requests.append((request.method, request.path, dict(request.headers)))
        if request.path.startswith("/redirect"):
            raise web.HTTPFound(self.redirect_to)
        if request.path.startswith("/big"):
            return web.Response(body=PNG + b"\0" * 4096, content_type="image/png")
        if request.path.startswith("/slow"):
            await asyncio.sleep(2)
        if request.path.startswith("/stream"):
            resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
            await resp.prepare(request)
            await resp.write(b"event: output\ndata: streamed\n\nevent: done\ndata: {}\n\n")
            await resp.write_eof()
            return resp
        return web.Response(body=PNG, content_type="image/png")


@pytest.fixture
async def detector() -> AsyncIterator[Detector]:
    det = await Detector().start()
    yield det
    await det.stop()


@pytest.fixture
async def redirector() -> AsyncIterator[Detector]:
    det = await Detector().start()
    yield det
    await det.stop()


@pytest.fixture
def connects(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, int]]:
    """Every (address, port) an aiohttp client connect tried; non-loopback ones are refused
    before the socket connects, so a test can never reach beyond this machine."""
    seen: list[tuple[str, int]] = []
    original = aiohappyeyeballs.impl._connect_sock

    async def guarded(loop: Any, exceptions: Any, addr_info: Any, *args: Any, **kw: Any) -> socket.socket:
        host, port = str(addr_info[4][0]), int(addr_info[4][1])
        seen.append((host, port))
        if not ipaddress.ip_address(host.split("%")[0]).is_loopback:
            exceptions.append([ConnectionRefusedError(f"test guard: {host} is off limits")])
            raise ConnectionRefusedError(f"test guard: {host} is off limits")
        return await original(loop, exceptions, addr_info, *args, **kw)

    monkeypatch.setattr(aiohappyeyeballs.impl, "_connect_sock", guarded)
    return seen


@pytest.fixture
def refusals(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Addresses the fetch checker refused."""
    refused: list[str] = []
    original = safe_fetch.check_address

    def spy(address: str, policy: FetchConfig) -> None:
        try:
            original(address, policy)
        except safe_fetch.FetchRefused:
            refused.append(address)
            raise

    monkeypatch.setattr(safe_fetch, "check_address", spy)
    return refused


@pytest.fixture
async def dns(monkeypatch: pytest.MonkeyPatch) -> dict[str, list[list[str]]]:
    """Names whose DNS answers the test decides: each lookup pops the next answer."""
    answers: dict[str, list[list[str]]] = {}
    loop = asyncio.get_running_loop()
    original = loop.getaddrinfo

    async def fake(host: Any, port: Any, *args: Any, **kw: Any) -> Any:
        name = host.decode() if isinstance(host, bytes) else str(host)
        name = name.rstrip(".")
        if name not in answers:
            return await original(host, port, *args, **kw)
        queue = answers[name]
        addresses = queue.pop(0) if len(queue) > 1 else queue[0]
        out = []
        for a in addresses:
            if ":" in a:
                out.append((socket.AF_INET6, socket.SOCK_STREAM, 6, "", (a, int(port), 0, 0)))
            else:
                out.append((socket.AF_INET, socket.SOCK_STREAM, 6, "", (a, int(port))))
        return out

    monkeypatch.setattr(loop, "getaddrinfo", fake)
    return answers


@pytest.fixture
async def bedrock() -> AsyncIterator[FakeBedrock]:
    fake = await FakeBedrock().start()
    yield fake
    await fake.stop()


def bedrock_env(fake: FakeBedrock) -> dict[str, str]:
    return {
        "AWS_REGION": fake.region,
        "AWS_ACCESS_KEY_ID": fake.access_key_id,
        "AWS_SECRET_ACCESS_KEY": fake.secret_access_key,
        "BEDROCK_BASE_URL": fake.base_url,
    }


async def ask_with_image(gw: Any, url: str) -> tuple[int, Any]:
    body = {
        "model": MODEL,
        "messages": [
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "what is this?"},
                    {"type": "image_url", "image_url": {"url": url}},
                ],
            }
        ],
    }
    async with aiohttp.ClientSession() as s:
        async with s.post(gw.proxy_url + "/v1/chat/completions", json=body) as resp:
            return resp.status, await resp.json(content_type=None)


def assert_neutral(status: int, body: Any, *forbidden: str) -> None:
    assert (status, body) == (400, NEUTRAL)
    text = orjson.dumps(body).decode()
    for word in forbidden:
        assert word not in text


# ------------------------------------------------------------------ image URLs (Bedrock)


async def test_http_is_refused_by_default(gateway_factory, bedrock, detector, connects):
    gw = await gateway_factory(env=bedrock_env(bedrock))
    status, body = await ask_with_image(gw, f"{detector.url}/cat.png")
    assert_neutral(status, body, str(detector.port))
    assert detector.requests == [] and all(port != detector.port for _, port in connects)


@pytest.mark.parametrize(
    "template",
    [
        "http://127.0.0.1:{port}/cat.png",
        "https://127.0.0.1:{port}/cat.png",
        "http://localhost:{port}/cat.png",
        "http://[::1]:{port}/cat.png",
        "http://[::ffff:127.0.0.1]:{port}/cat.png",
        "http://2130706433:{port}/cat.png",
        "http://169.254.169.254/latest/meta-data/iam/security-credentials/",
        "http://[fd00:ec2::254]/latest/meta-data/",
        "http://10.0.0.1/cat.png",
        "http://0.0.0.0:{port}/cat.png",
        "file:///etc/passwd",
        "ftp://127.0.0.1:{port}/cat.png",
    ],
)
async def test_non_public_destinations_are_refused_before_connecting(
    gateway_factory, bedrock, detector, connects, template
):
    gw = await gateway_factory(config={"fetch": {"allow_http": True}}, env=bedrock_env(bedrock))
    before = list(connects)
    status, body = await ask_with_image(gw, template.format(port=detector.port))
    assert_neutral(status, body, str(detector.port), "169.254", "refused", "127.0.0.1")
    assert detector.requests == []
    attempted = connects[len(before) :]
    # The only connection the request made, if any, is none: the fetch never dialled out.
    assert all(port != detector.port for _, port in attempted)
    assert not [h for h, _ in attempted if not ipaddress.ip_address(h.split("%")[0]).is_loopback]


@pytest.mark.parametrize("address", ["169.254.169.254", "10.1.2.3", "127.0.0.1", "fd00:ec2::254", "::1"])
async def test_the_checker_refuses_before_any_connect(
    gateway_factory, bedrock, detector, connects, refusals, dns, address
):
    dns["images.example.com"] = [[address]]
    gw = await gateway_factory(config={"fetch": {"allow_http": True}}, env=bedrock_env(bedrock))
    status, body = await ask_with_image(gw, f"http://images.example.com:{detector.port}/cat.png")
    assert_neutral(status, body, address, str(detector.port))
    assert refusals == [address]
    # The URL's port is the detector's: no connection to it, whatever the address.
    assert all(port != detector.port for _, port in connects) and detector.requests == []


async def test_a_public_name_resolving_to_loopback_is_refused(
    gateway_factory, bedrock, detector, connects, refusals, dns
):
    dns["cdn.images.example.com"] = [[PUBLIC_LOOKING, "127.0.0.1"]]  # any private answer refuses
    gw = await gateway_factory(config={"fetch": {"allow_http": True}}, env=bedrock_env(bedrock))
    status, body = await ask_with_image(gw, f"http://cdn.images.example.com:{detector.port}/cat.png")
    assert_neutral(status, body)
    assert refusals == ["127.0.0.1"] and detector.requests == []
    assert all(port != detector.port for _, port in connects)


async def test_dns_rebinding_connects_only_to_the_checked_address(
    gateway_factory, bedrock, detector, connects, refusals, dns
):
    # First answer public, every later one loopback: a check-then-resolve-again fetcher would
    # pass the check and then dial the detector.
    dns["rebind.example.com"] = [[PUBLIC_LOOKING], ["127.0.0.1"]]
    gw = await gateway_factory(config={"fetch": {"allow_http": True}}, env=bedrock_env(bedrock))
    status, body = await ask_with_image(gw, f"http://rebind.example.com:{detector.port}/cat.png")
    assert_neutral(status, body)
    assert detector.requests == [] and refusals == []
    dialled = [h for h, p in connects if p == detector.port]
    assert dialled == [PUBLIC_LOOKING]  # the checked address (stopped by the test guard)


async def test_a_redirect_is_not_followed(gateway_factory, bedrock, detector, redirector, connects):
    redirector.redirect_to = f"{detector.url}/cat.png"
    # The unsafe test setting lets the fetch reach the loopback redirector at all.
    gw = await gateway_factory(
        config={"fetch": {"allow_http": True, "allow_private": True}}, env=bedrock_env(bedrock)
    )
    status, body = await ask_with_image(gw, f"{redirector.url}/redirect")
    assert_neutral(status, body, str(detector.port))
    assert len(redirector.requests) == 1 and detector.requests == []
    assert all(port != detector.port for _, port in connects)


async def test_size_and_time_caps(gateway_factory, bedrock, detector):
    gw = await gateway_factory(
        config={"fetch": {"allow_http": True, "allow_private": True, "max_bytes": 1024, "timeout": 0.3}},
        env=bedrock_env(bedrock),
    )
    status, body = await ask_with_image(gw, f"{detector.url}/big.png")
    assert_neutral(status, body, "1024")
    started = asyncio.get_running_loop().time()
    status, body = await ask_with_image(gw, f"{detector.url}/slow.png")
    assert_neutral(status, body)
    assert asyncio.get_running_loop().time() - started < 1.5


async def test_the_escape_hatch_reaches_loopback(gateway_factory, bedrock, detector):
    """The control: the same URLs work when the operator allows private destinations."""
    gw = await gateway_factory(
        config={"fetch": {"allow_http": True, "allow_private": True}}, env=bedrock_env(bedrock)
    )
    status, body = await ask_with_image(gw, f"{detector.url}/cat.png")
    assert status == 200, body
    assert len(detector.requests) == 1
    sent = bedrock.requests[-1].body["messages"][0]["content"][1]
    assert sent["image"]["source"]["bytes"] == base64.b64encode(PNG).decode()


async def test_messages_image_source_url_is_refused(gateway_factory, bedrock, detector):
    gw = await gateway_factory(config={"fetch": {"allow_http": True}}, env=bedrock_env(bedrock))
    body = {
        "model": MODEL,
        "max_tokens": 10,
        "messages": [
            {
                "role": "user",
                "content": [
                    {"type": "image", "source": {"type": "url", "url": f"{detector.url}/cat.png"}},
                    {"type": "text", "text": "what is this?"},
                ],
            }
        ],
    }
    async with aiohttp.ClientSession() as s:
        async with s.post(gw.proxy_url + "/v1/messages", json=body) as resp:
            status, text = resp.status, await resp.text()
    assert status == 400 and "image could not be fetched" in text
    assert str(detector.port) not in text and detector.requests == []


# ------------------------------------------------------------------ upstream-named URLs (Replicate)


class MisdirectingReplicate(FakeReplicate):
    """Answers predictions whose get/stream/cancel and output URLs name another host."""

    named_base = ""

    async def _create(self, request: web.Request, rec: Any, model: str, version: str) -> web.Response:
        resp = await super()._create(request, rec, model, version)
        if resp.status != 201:
            return resp
        pred = self.predictions[orjson.loads(resp.body)["id"]]
        pred.data["urls"] = {
            k: v.replace(self.base_url, self.named_base) for k, v in pred.data["urls"].items()
        }
        pred.pieces = [p.replace(self.base_url, self.named_base) for p in pred.pieces]
        if isinstance(pred.data.get("output"), list):
            pred.data["output"] = [p.replace(self.base_url, self.named_base) for p in pred.data["output"]]
        return web.json_response(pred.data, status=201)


@pytest.fixture
async def replicate(detector) -> AsyncIterator[MisdirectingReplicate]:
    fake = MisdirectingReplicate()
    fake.named_base = detector.url
    await fake.start()
    yield fake
    await fake.stop()


async def replicate_gateway(gateway_factory, fake: FakeReplicate, fetch: dict[str, Any] | None = None) -> Any:
    env = {"REPLICATE_API_TOKEN": fake.api_token, "REPLICATE_BASE_URL": fake.base_url}
    return await gateway_factory(config={"fetch": fetch} if fetch else None, env=env)


def carried_token(det: Detector, token: str) -> list[str]:
    return [path for _, path, headers in det.requests if any(token in v for v in headers.values())]


async def test_poll_url_on_another_host_never_gets_the_token(gateway_factory, replicate, detector):
    replicate.script = [{"slow": 1}]  # still processing: the adapter must poll urls.get
    gw = await replicate_gateway(gateway_factory, replicate)
    body = {"model": "meta/meta-llama-3-8b-instruct", "messages": [{"role": "user", "content": "Hi"}]}
    async with aiohttp.ClientSession() as s:
        async with s.post(gw.proxy_url + "/v1/chat/completions", json=body) as resp:
            status, text = resp.status, await resp.text()
    assert status == 502 and str(detector.port) not in text
    assert detector.requests == []


async def test_stream_url_on_another_host_is_read_without_the_token(gateway_factory, replicate, detector):
    gw = await replicate_gateway(gateway_factory, replicate, {"allow_http": True, "allow_private": True})
    body = {
        "model": "meta/meta-llama-3-8b-instruct",
        "messages": [{"role": "user", "content": "Hi"}],
        "stream": True,
    }
    async with aiohttp.ClientSession() as s:
        async with s.post(gw.proxy_url + "/v1/chat/completions", json=body) as resp:
            status, text = resp.status, await resp.text()
    await asyncio.sleep(0.2)  # a cancel or usage call would run after the stream
    assert status == 200 and "streamed" in text
    assert [path for _, path, _ in detector.requests] == ["/stream/pred0001"]
    assert carried_token(detector, replicate.api_token) == []
    assert all("Authorization" not in h and "authorization" not in h for _, _, h in detector.requests)


async def test_stream_url_on_a_private_host_is_refused_by_default(gateway_factory, replicate, detector):
    gw = await replicate_gateway(gateway_factory, replicate)
    body = {
        "model": "meta/meta-llama-3-8b-instruct",
        "messages": [{"role": "user", "content": "Hi"}],
        "stream": True,
    }
    async with aiohttp.ClientSession() as s:
        async with s.post(gw.proxy_url + "/v1/chat/completions", json=body) as resp:
            status, text = resp.status, await resp.text()
    await asyncio.sleep(0.2)
    assert status == 502 and str(detector.port) not in text
    assert detector.requests == []  # neither the stream nor the cancel URL


async def test_output_urls_on_another_host(gateway_factory, replicate, detector):
    body = {"model": "black-forest-labs/flux-schnell", "prompt": "a cat"}
    gw = await replicate_gateway(gateway_factory, replicate)
    async with aiohttp.ClientSession() as s:
        async with s.post(gw.proxy_url + "/v1/images/generations", json=body) as resp:
            as_url = await resp.json()
        async with s.post(
            gw.proxy_url + "/v1/images/generations", json={**body, "response_format": "b64_json"}
        ) as resp:
            refused = resp.status
    # URLs go back to the client as they are; downloading one from a loopback host is refused.
    assert as_url["data"][0]["url"].startswith(detector.url) and refused == 502
    assert detector.requests == []
    gw = await replicate_gateway(gateway_factory, replicate, {"allow_http": True, "allow_private": True})
    async with aiohttp.ClientSession() as s:
        async with s.post(
            gw.proxy_url + "/v1/images/generations", json={**body, "response_format": "b64_json"}
        ) as resp:
            fetched = await resp.json()
    assert base64.b64decode(fetched["data"][0]["b64_json"]) == PNG
    assert len(detector.requests) == 1 and carried_token(detector, replicate.api_token) == []


# ------------------------------------------------------------------ the helpers


@pytest.mark.parametrize(
    ("address", "public"),
    [
        ("8.8.8.8", True),
        ("2606:4700:4700::1111", True),
        ("::ffff:8.8.8.8", True),
        ("127.0.0.1", False),
        ("127.8.9.10", False),
        ("169.254.169.254", False),
        ("10.0.0.1", False),
        ("172.16.5.4", False),
        ("192.168.0.1", False),
        ("100.64.0.1", False),
        ("0.0.0.0", False),
        ("224.0.0.251", False),
        ("255.255.255.255", False),
        ("::", False),
        ("::1", False),
        ("fe80::1", False),
        ("fc00::1", False),
        ("fd00:ec2::254", False),
        ("ff02::1", False),
        ("::ffff:127.0.0.1", False),
        ("::ffff:169.254.169.254", False),
        ("64:ff9b::a9fe:a9fe", False),
        ("2002:7f00:0001::", False),
    ],
)
def test_public_address_classification(address: str, public: bool) -> None:
    assert is_public_address(ipaddress.ip_address(address)) is public


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("https://api.replicate.com/v1/predictions/x", True),
        ("https://api.replicate.com:443/v1/predictions/x", True),
        ("https://API.replicate.com/x", True),
        ("http://api.replicate.com/x", False),
        ("https://api.replicate.com:8443/x", False),
        ("https://api.replicate.com.evil.example/x", False),
        ("https://evil.example/?https://api.replicate.com", False),
        ("https://user@evil.example/x", False),
        ("/v1/predictions/x", False),
        ("not a url", False),
    ],
)
def test_same_origin(url: str, expected: bool) -> None:
    assert same_origin(url, "https://api.replicate.com/v1") is expected


async def test_fetcher_refuses_an_ip_literal_without_connecting(connects, refusals) -> None:
    fetcher = SafeFetcher(lambda: FetchConfig(allow_http=True))
    try:
        with pytest.raises(safe_fetch.FetchError):
            await fetcher.fetch("http://169.254.169.254/latest/meta-data/")
    finally:
        await fetcher.close()
    assert refusals == ["169.254.169.254"] and connects == []
