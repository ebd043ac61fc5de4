"""Where a tunnel for a host the gateway does not intercept may go.

In order: `intercept.passthrough: deny` refuses every tunnel; a non-empty
`passthrough_hosts` allowlist refuses hosts it does not name; the gateway's own listeners
(proxy, admin, transparent) are refused always; and unless `passthrough_allow_private`,
a host with any non-public address (`ferro_proxy.netpolicy`) is refused. The host is
resolved once and the tunnel connects to the addresses that were checked.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass
from fnmatch import fnmatchcase

from ferro_proxy.config import InterceptConfig
from ferro_proxy.intercept.tunnel import TunnelEnd
from ferro_proxy.netpolicy import (
    IPAddress,
    Listener,
    is_own_listener,
    is_public_address,
    parse_host_port,
    plain_address,
)


@dataclass(frozen=True, slots=True)
class Refusal:
    """Why a tunnel is refused: a metric action, an error code and a message for the client."""

    action: str
    code: str
    message: str


class PassthroughPolicy:
    """The passthrough rules of one `intercept:` config."""

    def __init__(self, config: InterceptConfig) -> None:
        self.allow = config.passthrough == "allow"
        self.allow_private = config.passthrough_allow_private
        self.hosts = [parse_host_port(entry) for entry in config.passthrough_hosts]

    def refuse_name(self, host: str, port: int) -> Refusal | None:
        """A refusal decided by the name alone (before any lookup), or None."""
        if not self.allow:
            return Refusal(
                "denied",
                "passthrough_denied",
                f"CONNECT to {host}:{port} refused: only provider hosts are allowed through "
                "this proxy (intercept.passthrough: deny)",
            )
        if self.hosts and not self.listed(host, port):
            return Refusal(
                "denied",
                "passthrough_denied",
                f"CONNECT to {host}:{port} refused: not in intercept.passthrough_hosts",
            )
        return None

    def listed(self, host: str, port: int) -> bool:
        name = host.strip("[]").lower().rstrip(".")
        return any(
            (want is None or want == port) and fnmatchcase(name, pattern) for pattern, want in self.hosts
        )

    def refuse_addresses(
        self, host: str, port: int, addresses: Iterable[IPAddress], own: Iterable[Listener]
    ) -> Refusal | None:
        """A refusal decided by the addresses `host` resolved to, or None."""
        listeners = list(own)
        for ip in addresses:
            if is_own_listener(ip, port, listeners):
                return own_listener_refusal(host, port)
            if not self.allow_private and not is_public_address(ip):
                return Refusal(
                    "not_public",
                    "passthrough_denied",
                    f"CONNECT to {host}:{port} refused: it is not a public address "
                    "(intercept.passthrough_allow_private is off)",
                )
        return None


def own_listener_refusal(host: str, port: int) -> Refusal:
    return Refusal(
        "own_listener",
        "passthrough_denied",
        f"CONNECT to {host}:{port} refused: that is one of the gateway's own listeners",
    )


def connected_to_self(end: TunnelEnd, listeners: Iterable[Listener]) -> bool:
    """A connection whose peer is a local address (the kernel picked that same address as
    the source) on one of the listeners' ports."""
    transport = end.transport
    if transport is None:
        return False
    peer, local = transport.get_extra_info("peername"), transport.get_extra_info("sockname")
    if not peer or not local:
        return False
    return peer[1] in {p for _, p in listeners} and plain_address(
        ipaddress.ip_address(peer[0])
    ) == plain_address(ipaddress.ip_address(local[0]))
