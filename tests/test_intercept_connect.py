"""The proxy listener at the connection level: tunnels for hosts it does not intercept (the
server's own certificate reaches the client; the test servers are on loopback, so these
tests set `passthrough_allow_private: true`), `passthrough: deny`, plain-HTTP proxy
requests, and bad input (malformed CONNECT lines, a stalled TLS handshake, oversized heads)
answered with clear errors while other connections carry on."""

from __future__ import annotations

import asyncio
import ssl

import aiohttp
import pytest

from ferro_proxy.intercept.ca import CA_CERT_FILE
from tests.fakes.intercept_tools import LocalTLSServer, client_context, error_of, raw_connect

CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}


@pytest.fixture
async def tls_server(tmp_path):
    server = await LocalTLSServer().start(tmp_path)
    yield server
    await server.stop()


async def _gateway(gateway_factory, fake_openai, tmp_path, **intercept):
    return await gateway_factory(
        {
            "providers": {"openai": {"base_url": fake_openai.base_url}},
            "intercept": {"enabled": True, "ca_dir": str(tmp_path / "ca"), **intercept},
        }
    )


async def _intercepted_chat(gw, tmp_path) -> int:
    ca_pem = (tmp_path / "ca" / CA_CERT_FILE).read_bytes()
    async with aiohttp.ClientSession() as s:
        async with s.post(
            "https://api.openai.com/v1/chat/completions",
            json=CHAT,
            proxy=gw.proxy_url,
            ssl=client_context(ca_pem),
        ) as resp:
            await resp.read()
            return resp.status


async def test_other_hosts_are_tunnelled_with_their_own_certificate(
    gateway_factory, fake_openai, tmp_path, tls_server
) -> None:
    gw = await _gateway(gateway_factory, fake_openai, tmp_path, passthrough_allow_private=True)
    reader, writer, status, _ = await raw_connect(
        gw.proxy_port, f"CONNECT 127.0.0.1:{tls_server.port} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode()
    )
    assert status == 200
    ctx = ssl.create_default_context(cadata=tls_server.ca_pem.decode())  # trusts only the server's CA
    await writer.start_tls(ctx, server_hostname="127.0.0.1")
    ssl_object = writer.get_extra_info("ssl_object")
    assert ssl_object.getpeercert(binary_form=True) == tls_server.cert_der
    writer.write(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
    answer = await asyncio.wait_for(reader.read(), 10)
    assert answer.startswith(b"HTTP/1.1 200") and answer.endswith(b"hello from the unrelated server")
    writer.close()
    assert tls_server.hits == 1 and fake_openai.requests == []


async def test_https_client_through_the_tunnel(gateway_factory, fake_openai, tmp_path, tls_server) -> None:
    gw = await _gateway(gateway_factory, fake_openai, tmp_path, passthrough_allow_private=True)
    async with aiohttp.ClientSession() as s:
        for _ in range(2):
            async with s.get(
                f"https://127.0.0.1:{tls_server.port}/",
                proxy=gw.proxy_url,
                ssl=client_context(tls_server.ca_pem),
            ) as resp:
                assert await resp.text() == "hello from the unrelated server"


async def test_passthrough_deny_refuses_other_hosts_but_still_intercepts(
    gateway_factory, fake_openai, tmp_path, tls_server
) -> None:
    gw = await _gateway(
        gateway_factory, fake_openai, tmp_path, passthrough="deny", passthrough_allow_private=True
    )
    _, writer, status, body = await raw_connect(
        gw.proxy_port, f"CONNECT 127.0.0.1:{tls_server.port} HTTP/1.1\r\n\r\n".encode()
    )
    writer.close()
    assert status == 403
    assert error_of(body)["code"] == "passthrough_denied"
    assert tls_server.hits == 0
    # a provider host on another port is not intercepted, so it is refused too
    _, writer, status, _ = await raw_connect(gw.proxy_port, b"CONNECT api.openai.com:8443 HTTP/1.1\r\n\r\n")
    writer.close()
    assert status == 403
    assert await _intercepted_chat(gw, tmp_path) == 200
    assert len(fake_openai.requests) == 1


async def test_unreachable_tunnel_target_gets_502(gateway_factory, fake_openai, tmp_path) -> None:
    gw = await _gateway(gateway_factory, fake_openai, tmp_path, passthrough_allow_private=True)
    with __import__("socket").socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        free = probe.getsockname()[1]
    _, writer, status, body = await raw_connect(
        gw.proxy_port, f"CONNECT 127.0.0.1:{free} HTTP/1.1\r\n\r\n".encode()
    )
    writer.close()
    assert status == 502 and error_of(body)["code"] == "upstream_unreachable"


@pytest.mark.parametrize(
    "head",
    [
        b"CONNECT api.openai.com HTTP/1.1\r\n\r\n",  # no port
        b"CONNECT api.openai.com:99999 HTTP/1.1\r\n\r\n",  # port out of range
        b"CONNECT api.openai.com:443\r\n\r\n",  # no version
        b"CONNECT  api.openai.com:443 HTTP/1.1\r\n\r\n",  # two spaces
        b"CONNECT bad_host!:443 HTTP/1.1\r\n\r\n",
        b"CONNECT :443 HTTP/1.1\r\n\r\n",
        b"CONNECT api.openai.com:443 SPDY/3\r\n\r\n",
    ],
)
async def test_malformed_connect_lines_get_400_and_the_listener_carries_on(
    gateway_factory, fake_openai, tmp_path, head
) -> None:
    gw = await _gateway(gateway_factory, fake_openai, tmp_path)
    _, writer, status, body = await raw_connect(gw.proxy_port, head)
    writer.close()
    assert status == 400
    error = error_of(body)
    assert error["code"] == "bad_connect" and error["type"] == "invalid_request_error"
    assert await _intercepted_chat(gw, tmp_path) == 200


async def test_oversized_connect_head_gets_431(gateway_factory, fake_openai, tmp_path) -> None:
    gw = await _gateway(gateway_factory, fake_openai, tmp_path)
    head = b"CONNECT api.openai.com:443 HTTP/1.1\r\nX-Padding: " + b"a" * 20000 + b"\r\n\r\n"
    _, writer, status, body = await raw_connect(gw.proxy_port, head)
    writer.close()
    assert status == 431 and error_of(body)["code"] == "request_header_too_large"
    assert await _intercepted_chat(gw, tmp_path) == 200


async def test_oversized_header_inside_an_intercepted_connection(
    gateway_factory, fake_openai, tmp_path
) -> None:
    gw = await _gateway(gateway_factory, fake_openai, tmp_path)
    ca_pem = (tmp_path / "ca" / CA_CERT_FILE).read_bytes()
    async with aiohttp.ClientSession() as s:
        async with s.post(
            "https://api.openai.com/v1/chat/completions",
            json=CHAT,
            headers={"X-Huge": "a" * 100_000},
            proxy=gw.proxy_url,
            ssl=client_context(ca_pem),
        ) as resp:
            assert resp.status in (400, 431)
    assert fake_openai.requests == []
    assert await _intercepted_chat(gw, tmp_path) == 200


async def test_a_client_that_never_finishes_its_handshake(gateway_factory, fake_openai, tmp_path) -> None:
    gw = await _gateway(gateway_factory, fake_openai, tmp_path, handshake_timeout="300ms")
    reader, writer, status, _ = await raw_connect(
        gw.proxy_port, b"CONNECT api.openai.com:443 HTTP/1.1\r\n\r\n"
    )
    assert status == 200
    writer.write(b"\x16\x03\x01\x00")  # the start of a ClientHello, then silence
    assert await _intercepted_chat(gw, tmp_path) == 200  # others are served meanwhile
    assert await asyncio.wait_for(reader.read(), 10) == b""  # then the gateway hangs up
    writer.close()
    # garbage instead of TLS is dropped the same way
    reader, writer, status, _ = await raw_connect(
        gw.proxy_port, b"CONNECT api.openai.com:443 HTTP/1.1\r\n\r\n"
    )
    writer.write(b"GET / HTTP/1.1\r\n\r\n")
    assert await asyncio.wait_for(reader.read(), 10) == b""
    writer.close()
    assert await _intercepted_chat(gw, tmp_path) == 200
    async with aiohttp.ClientSession() as s, s.get(gw.admin_url + "/metrics") as resp:
        text = await resp.text()
    assert 'ferro_intercept_connections_total{action="handshake_failed"} 2.0' in text


async def test_plain_http_proxy_requests(gateway_factory, fake_openai, tmp_path) -> None:
    gw = await _gateway(gateway_factory, fake_openai, tmp_path)
    async with aiohttp.ClientSession() as s:
        async with s.post("http://api.openai.com/v1/chat/completions", json=CHAT, proxy=gw.proxy_url) as resp:
            assert resp.status == 200
            assert (await resp.json())["choices"][0]["message"]["content"] == fake_openai.reply_text
        async with s.get("http://example.com/", proxy=gw.proxy_url) as resp:
            assert resp.status == 403
            assert (await resp.json())["error"]["code"] == "not_intercepted"
        # ordinary requests to the gateway itself are unchanged
        async with s.post(gw.proxy_url + "/v1/chat/completions", json=CHAT) as resp:
            assert resp.status == 200
    assert len(fake_openai.requests) == 2
