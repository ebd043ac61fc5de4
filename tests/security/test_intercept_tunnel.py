"""Interception is never an open tunnel: with the default `passthrough: allow`, a CONNECT
(or a transparently redirected connection) is tunnelled only to public addresses, never to
loopback, private or link-local ones (unless `passthrough_allow_private: true`), never to
the gateway's own listeners, and only to `passthrough_hosts` when that list is set.

Every destination here is on loopback: a "detector" listener counts the connections that
reach it. Private and public addresses are only classified, never connected to."""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket

import pytest

from ferro_proxy import netpolicy
from ferro_proxy.config import ConfigError, config_from_data
from ferro_proxy.intercept import transparent
from ferro_proxy.intercept.passthrough import connected_to_self
from ferro_proxy.intercept.tunnel import open_upstream
from ferro_proxy.netpolicy import NotPublicAddress, is_public_address, parse_host_port, resolve_public
from tests.fakes.intercept_tools import error_of, raw_connect

GATEWAY_KEY = "sk-ferro-tunnel-test-secret"


class Detector:
    """A TCP listener on 127.0.0.1 that counts connections and echoes what it gets."""

    def __init__(self) -> None:
        self.connections = 0
        self.server: asyncio.Server | None = None
        self.port = 0

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> Detector:
        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            self.connections += 1
            try:
                while data := await reader.read(4096):
                    writer.write(data)
                    await writer.drain()
            except ConnectionError:
                pass
            finally:
                writer.close()

        self.server = await asyncio.start_server(handle, host, port)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()


@pytest.fixture
async def detector():
    d = await Detector().start()
    yield d
    await d.stop()


async def _gateway(gateway_factory, fake_openai, tmp_path, **intercept):
    return await gateway_factory(
        {
            "providers": {"openai": {"base_url": fake_openai.base_url}},
            "intercept": {"enabled": True, "ca_dir": str(tmp_path / "ca"), **intercept},
        }
    )


def _connect_head(authority: str) -> bytes:
    return (
        f"CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n"
        f"Proxy-Authorization: Bearer {GATEWAY_KEY}\r\n\r\n"
    ).encode()


async def _connect(gw, authority: str) -> tuple[int, bytes]:
    reader, writer, status, body = await raw_connect(gw.proxy_port, _connect_head(authority))
    if status == 200:  # prove it is a working tunnel: the detector echoes
        writer.write(b"ping")
        await writer.drain()
        assert await asyncio.wait_for(reader.readexactly(4), 10) == b"ping"
    writer.close()
    return status, body


async def _metrics(gw) -> str:
    reader, writer = await asyncio.open_connection("127.0.0.1", gw.admin_port)
    writer.write(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    text = (await asyncio.wait_for(reader.read(), 10)).decode()
    writer.close()
    return text


# ---------------------------------------------------------------- CONNECT, default settings


@pytest.mark.parametrize(
    "host",
    [
        "127.0.0.1",
        "localhost",
        "127.1",  # short form of 127.0.0.1
        "2130706433",  # 127.0.0.1 as one decimal number
        "0.0.0.0",  # reaches local listeners on Linux
        "[::ffff:127.0.0.1]",
        "[::1]",
    ],
)
async def test_default_passthrough_refuses_loopback_before_connecting(
    gateway_factory, fake_openai, tmp_path, detector, caplog, host
) -> None:
    caplog.set_level(logging.INFO, logger="ferro_proxy")
    gw = await _gateway(gateway_factory, fake_openai, tmp_path)
    status, body = await _connect(gw, f"{host}:{detector.port}")
    assert status == 403
    error = error_of(body)
    assert error["code"] == "passthrough_denied" and error["type"] == "permission_error"
    assert "passthrough_allow_private" in error["message"]
    assert detector.connections == 0
    refused = [r for r in caplog.records if r.getMessage() == "CONNECT refused"]
    assert refused and refused[-1].levelno == logging.INFO
    fields = refused[-1].fields  # type: ignore[attr-defined]
    assert fields["host"] == host.lower() and fields["port"] == detector.port
    assert fields["action"] == "not_public"
    assert GATEWAY_KEY not in caplog.text and all(GATEWAY_KEY not in str(r.__dict__) for r in caplog.records)
    assert 'ferro_intercept_connections_total{action="not_public"} 1.0' in await _metrics(gw)


async def test_allow_private_tunnels_to_loopback(gateway_factory, fake_openai, tmp_path, detector) -> None:
    gw = await _gateway(gateway_factory, fake_openai, tmp_path, passthrough_allow_private=True)
    status, _ = await _connect(gw, f"127.0.0.1:{detector.port}")
    assert status == 200
    assert detector.connections == 1


async def test_the_gateways_own_listeners_are_refused_even_with_allow_private(
    gateway_factory, fake_openai, tmp_path
) -> None:
    gw = await _gateway(gateway_factory, fake_openai, tmp_path, passthrough_allow_private=True)
    for authority in (f"127.0.0.1:{gw.admin_port}", f"localhost:{gw.proxy_port}", f"[::1]:{gw.admin_port}"):
        status, body = await _connect(gw, authority)
        assert status == 403, authority
        assert "own listeners" in error_of(body)["message"]
    assert 'ferro_intercept_connections_total{action="own_listener"} 3.0' in await _metrics(gw)


async def test_a_connection_to_a_local_address_on_an_own_port_is_recognised(detector) -> None:
    """The check after connecting, for a listener on 0.0.0.0 reached at a local address."""
    end = await open_upstream([ipaddress.ip_address("127.0.0.1")], detector.port)
    try:
        assert connected_to_self(end, [("0.0.0.0", detector.port)])
        assert not connected_to_self(end, [("0.0.0.0", detector.port + 1)])
    finally:
        end.close_both()


# ---------------------------------------------------------------- passthrough_hosts


async def test_passthrough_hosts_refuses_hosts_it_does_not_name(
    gateway_factory, fake_openai, tmp_path, detector
) -> None:
    gw = await _gateway(
        gateway_factory,
        fake_openai,
        tmp_path,
        passthrough_allow_private=True,
        passthrough_hosts=["*.example.com", f"localhost:{detector.port + 1}"],
    )
    for authority in (f"localhost:{detector.port}", f"127.0.0.1:{detector.port}"):
        status, body = await _connect(gw, authority)
        assert status == 403
        assert error_of(body)["code"] == "passthrough_denied"
        assert "passthrough_hosts" in error_of(body)["message"]
    assert detector.connections == 0


async def test_passthrough_hosts_tunnels_the_hosts_it_names(
    gateway_factory, fake_openai, tmp_path, detector
) -> None:
    gw = await _gateway(
        gateway_factory,
        fake_openai,
        tmp_path,
        passthrough_allow_private=True,
        passthrough_hosts=[f"LOCALHOST:{detector.port}"],
    )
    assert (await _connect(gw, f"localhost:{detector.port}"))[0] == 200
    assert (await _connect(gw, f"127.0.0.1:{detector.port}"))[0] == 403  # the name is listed, not the IP
    assert detector.connections == 1


async def test_a_listed_host_still_needs_a_public_address(
    gateway_factory, fake_openai, tmp_path, detector
) -> None:
    gw = await _gateway(gateway_factory, fake_openai, tmp_path, passthrough_hosts=["localhost"])
    assert (await _connect(gw, f"localhost:{detector.port}"))[0] == 403
    assert detector.connections == 0


def test_bad_passthrough_hosts_entries_are_config_errors() -> None:
    with pytest.raises(ConfigError) as info:
        config_from_data(
            {"intercept": {"passthrough_hosts": ["ok.example.com:443", "a.example.com:99999", ""]}}
        )
    text = str(info.value)
    assert "intercept.passthrough_hosts[1]" in text and "intercept.passthrough_hosts[2]" in text
    assert "intercept.passthrough_hosts[0]" not in text


# ---------------------------------------------------------------- one lookup, the checked address


async def test_the_tunnel_connects_to_the_address_that_was_checked(
    gateway_factory, fake_openai, tmp_path, monkeypatch
) -> None:
    """A name whose second answer differs (DNS rebinding) is looked up once: the tunnel goes
    to the first answer."""
    first = await Detector().start("127.0.0.1")
    second = await Detector().start("127.0.0.2", first.port)
    try:
        gw = await _gateway(
            gateway_factory,
            fake_openai,
            tmp_path,
            passthrough_allow_private=True,
            passthrough_hosts=["rebind.test"],
        )
        loop = asyncio.get_running_loop()
        real = loop.getaddrinfo
        answers = iter(["127.0.0.1"])

        async def rebinding(host, port, *args, **kw):
            if host == "rebind.test":
                ip = next(answers, "127.0.0.2")
                return [(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", (ip, port))]
            return await real(host, port, *args, **kw)

        monkeypatch.setattr(loop, "getaddrinfo", rebinding)
        assert (await _connect(gw, f"rebind.test:{first.port}"))[0] == 200
        assert first.connections == 1 and second.connections == 0
    finally:
        await first.stop()
        await second.stop()


# ---------------------------------------------------------------- transparent mode


async def _transparent(gateway_factory, fake_openai, tmp_path, monkeypatch, destination, **intercept):
    monkeypatch.setattr(transparent, "original_destination", lambda sock: destination)
    gw = await _gateway(gateway_factory, fake_openai, tmp_path, transparent_listen="127.0.0.1:0", **intercept)
    port = gw.gateway.services["transparent_listener"].sockets[0].getsockname()[1]
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"ping")  # not TLS: tunnelled to the original destination, or closed
    await writer.drain()
    try:
        answer = await asyncio.wait_for(reader.read(4), 10)
    except ConnectionResetError:  # closed with a reset: nothing was tunnelled
        answer = b""
    writer.close()
    return answer


async def test_transparent_connections_to_loopback_are_closed(
    gateway_factory, fake_openai, tmp_path, monkeypatch, detector
) -> None:
    answer = await _transparent(
        gateway_factory, fake_openai, tmp_path, monkeypatch, ("127.0.0.1", detector.port)
    )
    assert answer == b"" and detector.connections == 0


async def test_transparent_connections_with_allow_private_are_tunnelled(
    gateway_factory, fake_openai, tmp_path, monkeypatch, detector
) -> None:
    answer = await _transparent(
        gateway_factory,
        fake_openai,
        tmp_path,
        monkeypatch,
        ("127.0.0.1", detector.port),
        passthrough_allow_private=True,
    )
    assert answer == b"ping" and detector.connections == 1


# ---------------------------------------------------------------- the address classifier


@pytest.mark.parametrize(
    "address",
    [
        "10.1.2.3",
        "172.16.0.1",
        "192.168.1.1",
        "127.0.0.1",
        "169.254.169.254",  # cloud metadata
        "100.64.0.1",  # CGNAT
        "0.0.0.0",
        "224.0.0.1",
        "255.255.255.255",
        "240.0.0.1",
        "::1",
        "::",
        "fd00::1",
        "fe80::1",
        "ff02::1",
        "::ffff:127.0.0.1",
        "::ffff:10.0.0.1",
        "64:ff9b::a9fe:a9fe",  # NAT64 form of 169.254.169.254
        "2002:a00:1::1",  # 6to4 form of 10.0.0.1
        "not an address",
    ],
)
def test_non_public_addresses(address: str) -> None:
    assert not is_public_address(address)


@pytest.mark.parametrize("address", ["8.8.8.8", "1.1.1.1", "2606:4700:4700::1111", "::ffff:8.8.8.8"])
def test_public_addresses(address: str) -> None:
    assert is_public_address(address)
    assert is_public_address(ipaddress.ip_address(address))


async def test_resolve_public_refuses_any_private_answer(monkeypatch) -> None:
    """Lookup only (the resolver is replaced): nothing is connected to."""
    assert [str(ip) for ip in await resolve_public("8.8.8.8", 443)] == ["8.8.8.8"]
    with pytest.raises(NotPublicAddress):
        await resolve_public("[fd00::1]", 443)
    loop = asyncio.get_running_loop()

    async def mixed(host, port, *args, **kw):
        return [
            (socket.AF_INET, socket.SOCK_STREAM, 6, "", ("8.8.8.8", port)),
            (socket.AF_INET, socket.SOCK_STREAM, 6, "", ("10.0.0.7", port)),
            (socket.AF_INET, socket.SOCK_STREAM, 6, "", ("8.8.8.8", port)),
        ]

    monkeypatch.setattr(loop, "getaddrinfo", mixed)
    with pytest.raises(NotPublicAddress) as info:
        await resolve_public("mixed.test", 443)
    assert str(info.value.address) == "10.0.0.7"
    found = await resolve_public("mixed.test", 443, allow_private=True)
    assert [str(ip) for ip in found] == ["8.8.8.8", "10.0.0.7"]  # deduplicated, in order
    assert await netpolicy.resolve_host("mixed.test") == found


def test_parse_host_port() -> None:
    assert parse_host_port("API.Example.com.") == ("api.example.com", None)
    assert parse_host_port("*.example.com:443") == ("*.example.com", 443)
    assert parse_host_port("[2001:db8::1]:8443") == ("2001:db8::1", 8443)
    assert parse_host_port("2001:db8::1") == ("2001:db8::1", None)
    for bad in ("", "host:0", "host:x", "a b", "[::1]x", "user@host"):
        with pytest.raises(ValueError):
            parse_host_port(bad)
