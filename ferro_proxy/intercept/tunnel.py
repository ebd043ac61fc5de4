"""Byte-for-byte tunnels for CONNECT hosts the gateway does not intercept.

Two protocol ends forward to each other with flow control (a full peer pauses the other
side's reading) and half-close (EOF is passed on; the tunnel closes once both sides
finished or either side drops).
"""

from __future__ import annotations

import asyncio

from ferro_proxy.netpolicy import IPAddress


class TunnelEnd(asyncio.Protocol):
    """One side of a tunnel; `peer` is the other side."""

    def __init__(self, on_closed: asyncio.Future[None] | None = None) -> None:
        self.transport: asyncio.Transport | None = None
        self.peer: TunnelEnd | None = None
        self.got_eof = False
        self.closed = False
        self._on_closed = on_closed
        self._early: list[bytes] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        peer = self.peer
        if peer is None or peer.transport is None:
            self._early.append(data)
        elif not peer.transport.is_closing():
            peer.transport.write(data)

    def eof_received(self) -> bool:
        self.got_eof = True
        peer = self.peer
        if peer is None or peer.transport is None or peer.got_eof:
            self.close_both()
            return False
        if peer.transport.can_write_eof():
            peer.transport.write_eof()
            return True  # keep our write side open for the peer's answer
        self.close_both()
        return False

    def connection_lost(self, exc: BaseException | None) -> None:
        self.closed = True
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.close()  # flushes what is buffered first
        if self._on_closed is not None and not self._on_closed.done():
            self._on_closed.set_result(None)

    def pause_writing(self) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.resume_reading()

    def close_both(self) -> None:
        for end in (self, self.peer):
            if end is not None and end.transport is not None:
                end.transport.close()

    def link(self, peer: TunnelEnd) -> None:
        self.peer, peer.peer = peer, self
        for end in (self, peer):
            early, end._early = end._early, []
            for data in early:
                end.data_received(data)


async def open_upstream(addresses: list[IPAddress], port: int) -> TunnelEnd:
    """Connect to the first of `addresses` that answers. Numeric addresses only: the
    caller checked them, so the name is never looked up again. Raises OSError."""
    loop = asyncio.get_running_loop()
    error: OSError = OSError("no address to connect to")
    for ip in addresses:
        end = TunnelEnd()
        try:
            await loop.create_connection(lambda end=end: end, str(ip), port)  # type: ignore[misc]
        except OSError as exc:
            error = exc
            continue
        return end
    raise error


def splice(client: asyncio.Transport, upstream: TunnelEnd, first_bytes: bytes = b"") -> TunnelEnd:
    """Make `client` (whose reading is paused) one end of a tunnel to `upstream`."""
    client_end = TunnelEnd()
    client.set_protocol(client_end)
    client_end.connection_made(client)
    client_end.link(upstream)
    if first_bytes and upstream.transport is not None:
        upstream.transport.write(first_bytes)
    client.resume_reading()
    return client_end
