"""The connection-level front of the proxy listener when interception is on.

Each new connection starts with `ProxyFront`, which looks at the first bytes only:
anything but `CONNECT` is handed at once to the proxy app's aiohttp RequestHandler, fed the
bytes already read (ordinary and absolute-form requests; the latter are mapped in
`requests.py`). A `CONNECT host:port` is read to the end of its head and then

- intercepted (a provider host on 443): `200 Connection Established`, TLS terminated with a
  leaf certificate minted for the host, and the decrypted stream handed to a fresh
  RequestHandler of the same proxy app, in a context naming the host;
- tunnelled byte for byte to `host:port` when `passthrough.py` allows it (by default: only
  to public addresses, resolved once and connected to as checked);
- else refused with 403 (`intercept.passthrough: deny`, not in `passthrough_hosts`, a
  private address, or one of the gateway's own listeners).

Errors before the tunnel exists are HTTP responses with an OpenAI-shaped JSON body; a
failed TLS handshake or an upstream that cannot be reached closes that one connection.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import logging
import re
import ssl
from typing import TYPE_CHECKING, Any

from aiohttp import web
from yarl import URL

from ferro_proxy.errors import GatewayError
from ferro_proxy.intercept import requests as intercept_requests
from ferro_proxy.intercept.ca import CertificateAuthority
from ferro_proxy.intercept.hosts import HostTable
from ferro_proxy.intercept.passthrough import (
    PassthroughPolicy,
    Refusal,
    connected_to_self,
    own_listener_refusal,
)
from ferro_proxy.intercept.requests import CONNECTION, Intercepted
from ferro_proxy.intercept.tunnel import TunnelEnd, open_upstream, splice
from ferro_proxy.jsonlog import log_fields
from ferro_proxy.netpolicy import OWN_LISTENERS, IPAddress, Listener, resolve_host

if TYPE_CHECKING:
    from ferro_proxy.config import InterceptConfig
    from ferro_proxy.gateway import Gateway

log = logging.getLogger("ferro_proxy.intercept")

MAX_CONNECT_HEAD = 16 * 1024
_CONNECT = b"CONNECT "
_HOST = re.compile(
    r"^(?:[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,62})(?:\.[A-Za-z0-9_-]{1,63})*\.?|\[[0-9A-Fa-f:.]+\])$"
)
_REASONS = {
    400: "Bad Request",
    403: "Forbidden",
    408: "Request Timeout",
    431: "Request Header Fields Too Large",
}
_REASONS |= {502: "Bad Gateway", 503: "Service Unavailable", 504: "Gateway Timeout"}


def error_bytes(err: GatewayError) -> bytes:
    """A whole HTTP/1.1 error response for a connection that is then closed."""
    body = err.body()
    reason = _REASONS.get(err.status, "Error")
    head = (
        f"HTTP/1.1 {err.status} {reason}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    )
    return head.encode() + body


class Interceptor:
    """What the proxy listener needs to intercept: the CA, the host table, the app's server."""

    def __init__(self, gateway: Gateway, server: web.Server, ca: CertificateAuthority) -> None:
        self.gateway = gateway
        self.server = server
        self.ca = ca
        self._table: tuple[Any, HostTable] | None = None
        self._policy: tuple[Any, PassthroughPolicy] | None = None
        self.tunnels: set[TunnelEnd] = set()
        self.pending: set[asyncio.Task[None]] = set()
        metrics = gateway.metrics
        self.connections = metrics.counter(
            "ferro_intercept_connections_total",
            "Proxy connections by what the gateway did with them",
            ["action"],
        )
        self.requests = metrics.counter(
            "ferro_intercept_requests_total",
            "Requests that arrived through interception (ingress=intercept), by host and status",
            ["ingress", "host", "status"],
        )
        intercept_requests.install(server, self)

    @property
    def config(self) -> InterceptConfig:
        return self.gateway.config.intercept

    @property
    def table(self) -> HostTable:
        """The host table of the live config (rebuilt after a reload changed `intercept:`)."""
        config = self.config
        cached = self._table
        if cached is None or cached[0] is not config:
            cached = self._table = (config, HostTable(config))
        return cached[1]

    @property
    def policy(self) -> PassthroughPolicy:
        config = self.config
        cached = self._policy
        if cached is None or cached[0] is not config:
            cached = self._policy = (config, PassthroughPolicy(config))
        return cached[1]

    def own_listeners(self) -> list[Listener]:
        own: list[Listener] = list(self.gateway.services.get(OWN_LISTENERS, []))
        transparent = self.gateway.services.get("transparent_listener")
        if transparent is not None:
            own += [sock.getsockname()[:2] for sock in transparent.sockets]
        return own

    async def open_passthrough(
        self, host: str, port: int, address: IPAddress | None = None
    ) -> TunnelEnd | Refusal:
        """The upstream end of a tunnel to `host:port`, or why there is none. `address`:
        where the connection was going (transparent mode); else `host` is resolved, once.
        Raises OSError / TimeoutError when the destination cannot be reached."""
        policy = self.policy
        refusal = policy.refuse_name(host, port)
        if refusal is not None:
            return refusal
        own = self.own_listeners()
        async with asyncio.timeout(self.config.connect_timeout):
            addresses = [address] if address is not None else await resolve_host(host, port)
            refusal = policy.refuse_addresses(host, port, addresses, own)
            if refusal is not None:
                return refusal
            upstream = await open_upstream(addresses, port)
        if connected_to_self(upstream, own):
            upstream.close_both()
            return own_listener_refusal(host, port)
        return upstream

    def count_request(self, mark: Intercepted, status: int) -> None:
        self.requests.labels("intercept", mark.target.host, str(status)).inc()

    def http_proxy_target(self, url: URL) -> Intercepted | GatewayError:
        """An absolute-form request (`POST http://host/...`): intercepted, or refused."""
        host = url.host or ""
        target = self.table.match(host) if url.scheme == "http" else None
        if target is None:
            self.connections.labels("http_refused").inc()
            return GatewayError(
                403,
                f"plain-HTTP proxying is only for intercepted provider hosts; {host or 'this host'} is not one",
                code="not_intercepted",
                type="permission_error",
            )
        return Intercepted(target, via="http-proxy")

    # ------------------------------------------------------------ CONNECT

    def start_connect(self, transport: asyncio.Transport, head: bytes, rest: bytes) -> None:
        task = asyncio.get_running_loop().create_task(self._connect(transport, head, rest))
        self.pending.add(task)
        task.add_done_callback(self.pending.discard)

    async def _connect(self, transport: asyncio.Transport, head: bytes, rest: bytes) -> None:
        try:
            host, port, gateway_key = parse_connect(head)
        except GatewayError as err:
            self._refuse(transport, err, "malformed")
            return
        try:
            target = self.table.match(host) if port == 443 else None
            if target is not None:
                await self.intercept(transport, Intercepted(target, gateway_key), rest)
            else:
                await self._tunnel(transport, host, port, rest)
        except Exception:  # never let one connection take the listener down
            log.exception("CONNECT handling failed", extra={"fields": {"host": host, "port": port}})
            transport.abort()

    def _refuse(self, transport: asyncio.Transport, err: GatewayError, action: str, **fields: Any) -> None:
        self.connections.labels(action).inc()
        log_fields(
            log, logging.INFO, "CONNECT refused", action=action, status=err.status, code=err.code, **fields
        )
        if not transport.is_closing():
            transport.write(error_bytes(err))
            transport.close()

    async def intercept(self, transport: asyncio.Transport, mark: Intercepted, rest: bytes) -> None:
        """Terminate TLS for `mark.target.host` and serve the requests inside."""
        host = mark.target.host
        if rest:  # TLS bytes sent before our 200: the client did not wait for the tunnel
            self._refuse(
                transport,
                GatewayError(400, "data was sent before the CONNECT was answered", code="bad_connect"),
                "malformed",
            )
            return
        try:
            context = self.ca.server_context(host)
        except (ValueError, ssl.SSLError) as exc:
            log_fields(log, logging.ERROR, "cannot mint a certificate", host=host, error=type(exc).__name__)
            self._refuse(transport, GatewayError(502, f"cannot mint a certificate for {host}"), "error")
            return
        if mark.via == "connect":
            transport.write(b"HTTP/1.1 200 Connection Established\r\n\r\n")
        await self.serve_tls(transport, mark, context)

    async def serve_tls(
        self, transport: asyncio.Transport, mark: Intercepted, context: ssl.SSLContext
    ) -> None:
        loop = asyncio.get_running_loop()
        waiting = _Waiting()
        try:
            tls = await loop.start_tls(
                transport,
                waiting,
                context,
                server_side=True,
                ssl_handshake_timeout=self.config.handshake_timeout,
            )
        except (OSError, ssl.SSLError, TimeoutError, ConnectionError) as exc:
            # Typically: the app does not trust the gateway's CA yet, or it stalled.
            self.connections.labels("handshake_failed").inc()
            log_fields(
                log,
                logging.WARNING,
                "TLS handshake with the client failed (does it trust the gateway CA?)",
                host=mark.target.host,
                error=type(exc).__name__,
            )
            transport.abort()
            return
        if tls is None:
            transport.abort()
            return
        self.connections.labels("intercepted").inc()
        log_fields(log, logging.DEBUG, "intercepting", host=mark.target.host, via=mark.via)
        token = CONNECTION.set(mark)
        try:  # the handler's tasks copy this context: they know the host
            waiting.hand_over(self.server(), tls)
        finally:
            CONNECTION.reset(token)

    async def _tunnel(self, transport: asyncio.Transport, host: str, port: int, rest: bytes) -> None:
        try:
            upstream = await self.open_passthrough(host, port)
        except (OSError, TimeoutError) as exc:
            self._refuse(
                transport,
                GatewayError(
                    502 if not isinstance(exc, TimeoutError) else 504,
                    f"cannot reach {host}:{port}: {type(exc).__name__}",
                    code="upstream_unreachable",
                    type="api_error",
                ),
                "tunnel_failed",
                host=host,
                port=port,
            )
            return
        if isinstance(upstream, Refusal):
            err = GatewayError(403, upstream.message, code=upstream.code, type="permission_error")
            self._refuse(transport, err, upstream.action, host=host, port=port)
            return
        if transport.is_closing():
            upstream.close_both()
            return
        transport.write(b"HTTP/1.1 200 Connection Established\r\n\r\n")
        self.track_tunnel(splice(transport, upstream, rest))
        self.connections.labels("tunnelled").inc()
        log_fields(log, logging.DEBUG, "tunnelling", host=host, port=port)

    def track_tunnel(self, end: TunnelEnd) -> None:
        self.tunnels.add(end)
        assert end.peer is not None
        self.tunnels.add(end.peer)
        for e in (end, end.peer):
            original = e.connection_lost

            def lost(exc: BaseException | None, e: TunnelEnd = e, original: Any = original) -> None:
                self.tunnels.discard(e)
                original(exc)

            e.connection_lost = lost  # type: ignore[method-assign]

    async def close(self) -> None:
        for task in list(self.pending):
            task.cancel()
        for end in list(self.tunnels):
            if end.transport is not None:
                end.transport.close()
        self.tunnels.clear()


class _Waiting(asyncio.Protocol):
    """Holds what arrives on a fresh TLS connection until the RequestHandler takes over."""

    def __init__(self) -> None:
        self.buffered: list[bytes] = []
        self.eof = False
        self.lost: tuple[BaseException | None] | None = None

    def data_received(self, data: bytes) -> None:
        self.buffered.append(data)

    def eof_received(self) -> bool:
        self.eof = True
        return False

    def connection_lost(self, exc: BaseException | None) -> None:
        self.lost = (exc,)

    def hand_over(self, handler: asyncio.Protocol, transport: asyncio.Transport) -> None:
        transport.set_protocol(handler)
        handler.connection_made(transport)
        for data in self.buffered:
            handler.data_received(data)
        self.buffered.clear()
        if self.eof:
            handler.eof_received()
        if self.lost is not None:
            handler.connection_lost(self.lost[0])


def parse_connect(head: bytes) -> tuple[str, int, str | None]:
    """(host, port, gateway key from Proxy-Authorization) of a CONNECT head."""
    text = head.decode("latin-1")
    line, _, header_block = text.partition("\r\n")
    parts = line.split(" ")
    if len(parts) != 3 or parts[0] != "CONNECT" or not parts[2].startswith("HTTP/1."):
        raise GatewayError(
            400, "malformed CONNECT request line; expected 'CONNECT host:port HTTP/1.1'", code="bad_connect"
        )
    authority = parts[1]
    host, sep, port_text = authority.rpartition(":")
    if not sep or not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise GatewayError(400, f"CONNECT target {authority[:100]!r} has no valid port", code="bad_connect")
    if not _HOST.match(host):
        raise GatewayError(400, f"CONNECT target {host[:100]!r} is not a valid host name", code="bad_connect")
    gateway_key = None
    for header in header_block.split("\r\n"):
        name, sep, value = header.partition(":")
        if sep and name.strip().lower() == "proxy-authorization":
            gateway_key = _gateway_key(value.strip())
    return host.lower(), int(port_text), gateway_key


def _gateway_key(value: str) -> str | None:
    """A sk-ferro key from `Bearer sk-ferro-…` or Basic credentials (`user:sk-ferro-…`)."""
    scheme, _, credentials = value.partition(" ")
    scheme = scheme.lower()
    if scheme == "bearer":
        token = credentials.strip()
    elif scheme == "basic":
        try:
            decoded = base64.b64decode(credentials.strip(), validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            return None
        token = decoded.partition(":")[2]
    else:
        return None
    return token if token.startswith("sk-ferro-") else None


class ProxyFront(asyncio.Protocol):
    """First protocol of every proxy connection: CONNECT, or straight to aiohttp."""

    __slots__ = ("interceptor", "transport", "buffer", "_timer")

    def __init__(self, interceptor: Interceptor) -> None:
        self.interceptor = interceptor
        self.transport: asyncio.Transport | None = None
        self.buffer = b""
        self._timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        timeout = self.interceptor.config.head_timeout
        self._timer = asyncio.get_running_loop().call_later(timeout, self._too_slow)

    def data_received(self, data: bytes) -> None:
        buffer = self.buffer + data if self.buffer else data
        transport = self.transport
        assert transport is not None
        if not buffer.startswith(_CONNECT):
            if len(buffer) < len(_CONNECT) and _CONNECT.startswith(buffer):
                self.buffer = buffer  # "CONN…" so far: wait for the rest of the method
                return
            self._stop_timer()
            handler = self.interceptor.server()
            transport.set_protocol(handler)
            handler.connection_made(transport)
            handler.data_received(buffer)
            return
        end = buffer.find(b"\r\n\r\n")
        if end > MAX_CONNECT_HEAD or (end < 0 and len(buffer) > MAX_CONNECT_HEAD):
            self._error(
                GatewayError(
                    431,
                    f"CONNECT request head is larger than {MAX_CONNECT_HEAD} bytes",
                    code="request_header_too_large",
                )
            )
            return
        if end < 0:
            self.buffer = buffer
            return
        self._stop_timer()
        self.buffer = b""
        transport.pause_reading()
        self.interceptor.start_connect(transport, buffer[:end], buffer[end + 4 :])

    def eof_received(self) -> bool:
        return False

    def connection_lost(self, exc: BaseException | None) -> None:
        self._stop_timer()

    def _too_slow(self) -> None:
        self._timer = None
        self._error(GatewayError(408, "no complete request head in time", code="request_timeout"))

    def _error(self, err: GatewayError) -> None:
        self._stop_timer()
        transport = self.transport
        if transport is not None and not transport.is_closing():
            self.interceptor.connections.labels("malformed").inc()
            transport.write(error_bytes(err))
            transport.close()

    def _stop_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


class InterceptingSite(web.TCPSite):
    """A TCPSite whose connections start with `ProxyFront` instead of aiohttp directly."""

    def __init__(
        self, runner: web.BaseRunner, host: str, port: int, interceptor: Interceptor, **kw: Any
    ) -> None:
        super().__init__(runner, host, port, **kw)
        self.interceptor = interceptor

    async def start(self) -> None:
        self._runner._reg_site(self)
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: ProxyFront(self.interceptor),
            self._host,
            self._port,
            backlog=self._backlog,
            reuse_address=self._reuse_address,
            reuse_port=self._reuse_port,
        )
        sockets = self._server.sockets
        self._bound_port = sockets[0].getsockname()[1] if sockets else self._port

    async def stop(self) -> None:
        await super().stop()
        with contextlib.suppress(Exception):
            await self.interceptor.close()
