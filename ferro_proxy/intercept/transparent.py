"""The transparent listener: connections iptables REDIRECTed to the gateway (see
`ferro-proxy intercept-rules`), handled exactly like a CONNECT to where they were going.

The original destination comes from SO_ORIGINAL_DST; the host name from the SNI of the
TLS ClientHello, read with MSG_PEEK so the bytes stay in the socket for the TLS layer (or
the tunnel). A provider host on 443 is intercepted; anything else is tunnelled to the
original destination when the passthrough policy allows it (by default only a public
address; `passthrough_hosts` is matched against the SNI name, or the address without one),
else closed. A connection that was not redirected has no original destination: it can only
be intercepted by its SNI.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
import struct
from typing import TYPE_CHECKING

from ferro_proxy.intercept.passthrough import Refusal
from ferro_proxy.intercept.requests import Intercepted
from ferro_proxy.intercept.tunnel import splice
from ferro_proxy.jsonlog import log_fields

if TYPE_CHECKING:
    from ferro_proxy.intercept.listener import Interceptor

log = logging.getLogger("ferro_proxy.intercept")

SO_ORIGINAL_DST = 80  # linux/netfilter_ipv4.h (and IP6T_SO_ORIGINAL_DST)
MAX_PEEK = 16 * 1024
PEEK_RETRY = 0.01
INCOMPLETE = object()


def original_destination(sock: socket.socket) -> tuple[str, int] | None:
    """Where a REDIRECTed connection was going, or None if it was not redirected."""
    try:
        if sock.family == socket.AF_INET6:
            raw = sock.getsockopt(socket.IPPROTO_IPV6, SO_ORIGINAL_DST, 28)
            return socket.inet_ntop(socket.AF_INET6, raw[8:24]), struct.unpack("!H", raw[2:4])[0]
        raw = sock.getsockopt(socket.SOL_IP, SO_ORIGINAL_DST, 16)
        return socket.inet_ntoa(raw[4:8]), struct.unpack("!H", raw[2:4])[0]
    except OSError:
        return None


def client_hello_sni(data: bytes) -> str | None | object:
    """The SNI host of a TLS ClientHello; None if it is not TLS or names none;
    INCOMPLETE while more bytes are needed."""
    if len(data) < 5:
        return INCOMPLETE if data[:1] in (b"", b"\x16") else None
    if data[0] != 0x16:
        return None
    record_len = struct.unpack("!H", data[3:5])[0]
    if len(data) < 5 + record_len:
        return INCOMPLETE if 5 + record_len <= MAX_PEEK else None
    body = data[5 : 5 + record_len]
    try:
        if body[0] != 1:  # not a ClientHello
            return None
        pos = 4 + 2 + 32  # handshake header, client_version, random
        pos += 1 + body[pos]  # session id
        pos += 2 + struct.unpack("!H", body[pos : pos + 2])[0]  # cipher suites
        pos += 1 + body[pos]  # compression methods
        end = pos + 2 + struct.unpack("!H", body[pos : pos + 2])[0]
        pos += 2
        while pos + 4 <= end:
            ext_type, ext_len = struct.unpack("!HH", body[pos : pos + 4])
            pos += 4
            if ext_type == 0:  # server_name: list length, then (type, length, name)
                name_type = body[pos + 2]
                name_len = struct.unpack("!H", body[pos + 3 : pos + 5])[0]
                if name_type == 0:
                    return body[pos + 5 : pos + 5 + name_len].decode("ascii").lower()
                return None
            pos += ext_len
    except (IndexError, struct.error, UnicodeDecodeError):
        return None
    return None


class TransparentFront(asyncio.Protocol):
    """Peeks at a redirected connection, then intercepts, tunnels or closes it."""

    def __init__(self, interceptor: Interceptor, own_address: tuple[str, int]) -> None:
        self.interceptor = interceptor
        self.own_address = own_address
        self.transport: asyncio.Transport | None = None
        self.peeker: socket.socket | None = None
        self.destination: tuple[str, int] | None = None
        self.deadline = 0.0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.transport.pause_reading()
        sock = transport.get_extra_info("socket")
        self.peeker = socket.fromfd(sock.fileno(), sock.family, sock.type)  # a dup, for MSG_PEEK
        self.peeker.setblocking(False)
        destination = original_destination(self.peeker)
        if (
            destination is not None
            and destination[1] == self.own_address[1]
            and destination[0]
            in (
                self.own_address[0],
                "127.0.0.1",
                "::1",
            )
        ):
            destination = None  # a direct connection, not a redirected one
        self.destination = destination
        loop = asyncio.get_running_loop()
        self.deadline = loop.time() + self.interceptor.config.head_timeout
        loop.add_reader(self.peeker.fileno(), self._peek)

    def _peek(self) -> None:
        loop = asyncio.get_running_loop()
        assert self.peeker is not None
        loop.remove_reader(self.peeker.fileno())
        try:
            data = self.peeker.recv(MAX_PEEK, socket.MSG_PEEK)
        except BlockingIOError:
            loop.add_reader(self.peeker.fileno(), self._peek)
            return
        except OSError:
            data = b""
        if not data:
            self._done()
            self._close()
            return
        sni = client_hello_sni(data)
        if sni is INCOMPLETE:
            if loop.time() > self.deadline:
                self._done()
                self._close()
                return
            # The peeked bytes stay readable: poll gently until the rest of the hello arrives.
            loop.call_later(PEEK_RETRY, loop.add_reader, self.peeker.fileno(), self._peek)
            return
        self._done()
        task = loop.create_task(self._decide(sni if isinstance(sni, str) else None, tls=data[0] == 0x16))
        self.interceptor.pending.add(task)
        task.add_done_callback(self.interceptor.pending.discard)

    def _done(self) -> None:
        if self.peeker is not None:
            self.peeker.close()
            self.peeker = None

    def _close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    async def _decide(self, sni: str | None, tls: bool) -> None:
        transport = self.transport
        assert transport is not None
        interceptor = self.interceptor
        destination = self.destination
        port = destination[1] if destination else 443
        host = sni or (destination[0] if destination else None)
        target = interceptor.table.match(host) if host and tls and port == 443 else None
        try:
            if target is not None:
                await interceptor.intercept(transport, Intercepted(target, via="transparent"), b"")
                return
            if destination is None:
                interceptor.connections.labels("denied").inc()
                log_fields(log, logging.INFO, "transparent connection refused", host=host, port=port)
                transport.abort()
                return
            address = ipaddress.ip_address(destination[0])
            try:
                upstream = await interceptor.open_passthrough(host or destination[0], port, address)
            except (OSError, TimeoutError) as exc:
                interceptor.connections.labels("tunnel_failed").inc()
                log_fields(log, logging.INFO, "cannot reach", host=host, port=port, error=type(exc).__name__)
                transport.abort()
                return
            if isinstance(upstream, Refusal):
                interceptor.connections.labels(upstream.action).inc()
                log_fields(
                    log,
                    logging.INFO,
                    "transparent connection refused",
                    host=host,
                    port=port,
                    action=upstream.action,
                )
                transport.abort()
                return
            interceptor.track_tunnel(splice(transport, upstream))
            interceptor.connections.labels("tunnelled").inc()
        except Exception:
            log.exception("transparent connection failed", extra={"fields": {"host": host}})
            transport.abort()

    def data_received(self, data: bytes) -> None:  # reading is paused until a decision
        pass

    def connection_lost(self, exc: BaseException | None) -> None:
        if self.peeker is not None:
            try:
                asyncio.get_running_loop().remove_reader(self.peeker.fileno())
            except (RuntimeError, ValueError):
                pass
            self._done()


async def start_transparent_listener(interceptor: Interceptor, listen: str) -> asyncio.Server:
    from ferro_proxy.server import parse_listen

    host, port = parse_listen(listen, 15001)
    loop = asyncio.get_running_loop()
    holder: dict[str, tuple[str, int]] = {}
    server = await loop.create_server(
        lambda: TransparentFront(interceptor, holder["own"]), host, port, reuse_address=True
    )
    holder["own"] = server.sockets[0].getsockname()[:2]
    interceptor.gateway.services["transparent_listener"] = server
    log_fields(log, logging.INFO, "transparent listener", address=f"{holder['own'][0]}:{holder['own'][1]}")
    return server
