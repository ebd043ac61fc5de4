"""Slow and greedy clients are bounded on both listeners; normal clients keep being served.

Hostile clients are raw sockets on loopback: heads and bodies trickled a byte at a time,
connections held open without a request. Limits are set small for the test (1 s); the
assertions leave generous margins for a loaded machine and never check exact timings.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

import aiohttp
import orjson

from ferro_proxy.server import Running

CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}
SLOW = 200
MARGIN = 6.0  # seconds past the limit a cut connection may still take on a busy machine


def limits(**proxy: Any) -> dict[str, Any]:
    base = {"header_timeout": 1, "idle_timeout": 30, "body_timeout": 1, "max_connections": 1024}
    return {"server": {"proxy": {**base, **proxy}, "admin": {**base, "max_connections": 64}}}


async def start(gateway_factory, fake_openai, **proxy: Any) -> Running:
    return await gateway_factory(
        limits(**proxy),
        env={"OPENAI_API_KEY": "sk-test-upstream-key", "OPENAI_BASE_URL": fake_openai.base_url},
    )


def host_port(url: str) -> tuple[str, int]:
    host, port = url.removeprefix("http://").rsplit(":", 1)
    return host, int(port)


async def trickle(url: str, data: bytes, every: float = 1.0) -> tuple[float, bytes]:
    """Send `data` one byte per `every` seconds until the server closes; (seconds open, answer)."""
    host, port = host_port(url)
    reader, writer = await asyncio.open_connection(host, port)
    began = time.monotonic()

    async def send() -> None:
        with contextlib.suppress(ConnectionError, OSError):
            for i in range(len(data)):
                writer.write(data[i : i + 1])
                await writer.drain()
                await asyncio.sleep(every)

    sender = asyncio.create_task(send())
    try:
        answer = await reader.read()  # until EOF (or a reset)
    except (ConnectionError, OSError):
        answer = b""
    finally:
        sender.cancel()
        writer.close()
    return time.monotonic() - began, answer


async def keep_serving(session: aiohttp.ClientSession, url: str, stop: asyncio.Event) -> list[int]:
    statuses: list[int] = []
    while not stop.is_set():
        async with session.post(url + "/v1/chat/completions", json=CHAT) as resp:
            await resp.read()
            statuses.append(resp.status)
        await asyncio.sleep(0.1)
    return statuses


async def test_200_slow_heads_are_cut_while_normal_clients_are_served(gateway_factory, fake_openai) -> None:
    gw = await start(gateway_factory, fake_openai)
    head = b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
    stop = asyncio.Event()
    async with aiohttp.ClientSession() as session:
        normal = asyncio.create_task(keep_serving(session, gw.proxy_url, stop))
        began = time.monotonic()
        slow = await asyncio.wait_for(
            asyncio.gather(*(trickle(gw.proxy_url, head) for _ in range(SLOW))), 1 + MARGIN + 5
        )
        stop.set()
        statuses = await normal
    assert time.monotonic() - began < 1 + MARGIN
    assert max(open_for for open_for, _ in slow) < 1 + MARGIN
    answered = [a for _, a in slow if a]
    assert all(a.startswith(b"HTTP/1.1 408 ") for a in answered)
    assert b'"code":"request_timeout"' in answered[0]
    assert statuses and set(statuses) == {200}


async def test_admin_listener_cuts_slow_heads_too(gateway_factory, fake_openai) -> None:
    gw = await start(gateway_factory, fake_openai)
    head = b"GET /health HTTP/1.1\r\nHost: x\r\n"
    async with aiohttp.ClientSession() as session:
        slow = asyncio.gather(*(trickle(gw.admin_url, head) for _ in range(30)))
        await asyncio.sleep(0.3)
        async with session.get(gw.admin_url + "/health") as resp:
            assert resp.status == 200
        results = await asyncio.wait_for(slow, 1 + MARGIN + 5)
    assert max(open_for for open_for, _ in results) < 1 + MARGIN


async def test_a_connection_that_sends_nothing_is_cut(gateway_factory, fake_openai) -> None:
    gw = await start(gateway_factory, fake_openai)
    open_for, answer = await asyncio.wait_for(trickle(gw.proxy_url, b""), 1 + MARGIN + 5)
    assert open_for < 1 + MARGIN
    assert answer == b"" or answer.startswith(b"HTTP/1.1 408 ")


async def test_keep_alive_second_request_trickled_is_cut(gateway_factory, fake_openai) -> None:
    """The head timer also runs for each later request on a kept-alive connection."""
    gw = await start(gateway_factory, fake_openai)
    host, port = host_port(gw.proxy_url)
    reader, writer = await asyncio.open_connection(host, port)
    writer.write(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
    first = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    assert first.startswith(b"HTTP/1.1 200 ")
    length = int(first.lower().split(b"content-length:")[1].split(b"\r\n")[0])
    await asyncio.wait_for(reader.readexactly(length), 5)
    began = time.monotonic()

    async def send() -> None:
        with contextlib.suppress(ConnectionError, OSError):
            for byte in b"GET /health HTTP/1.1\r\nHost: x\r\n":
                writer.write(bytes([byte]))
                await writer.drain()
                await asyncio.sleep(0.3)

    sender = asyncio.create_task(send())
    try:
        rest = await asyncio.wait_for(reader.read(), 1 + MARGIN)
    except (ConnectionError, OSError):
        rest = b""
    finally:
        sender.cancel()
        writer.close()
    assert time.monotonic() - began < 1 + MARGIN
    assert rest == b"" or rest.startswith(b"HTTP/1.1 408 ")


async def test_trickled_body_is_cut_but_long_streams_are_not(gateway_factory, fake_openai) -> None:
    gw = await start(gateway_factory, fake_openai)
    body = orjson.dumps(CHAT)
    head = (
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n"
    )
    host, port = host_port(gw.proxy_url)
    reader, writer = await asyncio.open_connection(host, port)
    writer.write(head)
    began = time.monotonic()

    async def send_body() -> None:
        with contextlib.suppress(ConnectionError, OSError):
            for i in range(len(body)):
                writer.write(body[i : i + 1])
                await writer.drain()
                await asyncio.sleep(0.2)

    sender = asyncio.create_task(send_body())
    try:
        answer = await asyncio.wait_for(reader.read(), 1 + MARGIN + 5)
    except (ConnectionError, OSError):
        answer = b""
    finally:
        sender.cancel()
        writer.close()
    assert time.monotonic() - began < 1 + MARGIN
    assert answer == b"" or answer.startswith(b"HTTP/1.1 408 ")
    assert fake_openai.requests == []  # a half-received body never went upstream

    # A stream that lasts longer than body_timeout (and header_timeout) runs to the end.
    fake_openai.script.append({"chunk_delay": 0.4})
    async with aiohttp.ClientSession() as session:
        t0 = time.monotonic()
        async with session.post(gw.proxy_url + "/v1/chat/completions", json={**CHAT, "stream": True}) as resp:
            assert resp.status == 200
            text = (await resp.read()).decode()
        assert time.monotonic() - t0 > 1.2
    assert text.rstrip().endswith("data: [DONE]")


async def test_max_connections_answers_503_and_recovers(gateway_factory, fake_openai) -> None:
    gw = await start(gateway_factory, fake_openai, max_connections=5, header_timeout=20)
    host, port = host_port(gw.proxy_url)
    held = [await asyncio.open_connection(host, port) for _ in range(5)]
    try:
        await asyncio.sleep(0.2)
        async with aiohttp.ClientSession() as session:
            async with session.post(gw.proxy_url + "/v1/chat/completions", json=CHAT) as resp:
                assert resp.status == 503
                assert resp.headers.get("Connection", "").lower() == "close"
                error = (await resp.json())["error"]
            assert error["code"] == "too_many_connections"
            assert error["type"] == "api_error"
            metrics = await (await session.get(gw.admin_url + "/metrics")).text()
        assert (
            'ferro_listener_connections_cut_total{listener="proxy",reason="max_connections"} 1.0' in metrics
        )
    finally:
        for _, writer in held:
            writer.close()
    await asyncio.sleep(0.3)
    async with aiohttp.ClientSession() as session:
        async with session.post(gw.proxy_url + "/v1/chat/completions", json=CHAT) as resp:
            assert resp.status == 200
