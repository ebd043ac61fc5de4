"""Which network addresses the gateway may reach on someone else's behalf.

A kernel module (stdlib only) shared by everything that connects where a client or an
upstream named: the interception tunnel, outbound fetches.

- `is_public_address(ip)`: True only for a globally routable unicast address. Loopback,
  link-local (169.254/16 — cloud metadata — and fe80::/10), private (10/8, 172.16/12,
  192.168/16), unique-local fc00::/7, CGNAT 100.64/10, multicast, unspecified, reserved and
  documentation ranges are not public; IPv4 embedded in IPv6 (`::ffff:a.b.c.d`, NAT64
  `64:ff9b::/96`, 6to4 `2002::/16`) is judged by its IPv4 address.
- `await resolve_host(host, port)`: every address a name resolves to (an IP literal as
  is). Connect to one of *these* addresses, not to the name again: a second lookup could
  answer differently (DNS rebinding).
- `await resolve_public(host, port)`: the same, but raises `NotPublicAddress` when any
  address is not public (unless `allow_private=True`).
- `gateway.services[OWN_LISTENERS]`: the `(host, port)` of the proxy and admin listeners
  (set by `ferro_proxy.server` once they are bound), never a destination:
  `is_own_listener(ip, port, listeners)`.
- `parse_host_port(entry)`: an allowlist entry `host`, `*.example.com:443`, `[::1]:8443`
  as `(host pattern, port or None)`; ValueError when malformed.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Iterable

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

Listener = tuple[str, int]  # (bound host, port) of one of the gateway's own listeners
OWN_LISTENERS = "own_listeners"

_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_CGNAT = ipaddress.ip_network("100.64.0.0/10")


class NotPublicAddress(Exception):
    """A destination that resolves to an address the policy refuses."""

    def __init__(self, host: str, address: IPAddress) -> None:
        self.host = host
        self.address = address
        super().__init__(f"{host} resolves to a non-public address")


def embedded_ipv4(ip: IPAddress) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 address carries (mapped, NAT64, 6to4), if any."""
    if ip.version == 4:
        return None
    assert isinstance(ip, ipaddress.IPv6Address)
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip in _NAT64:
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return ip.sixtofour


def is_public_address(ip: str | IPAddress) -> bool:
    """True for a globally routable unicast address; False for everything else, including
    a string that is not an IP address."""
    if isinstance(ip, str):
        try:
            ip = ipaddress.ip_address(ip)
        except ValueError:
            return False
    inner = embedded_ipv4(ip)
    if inner is not None:
        return is_public_address(inner)
    # is_global alone is not enough on 3.11: it is True for multicast and NAT64/6to4.
    return not (
        ip.is_private
        or ip.is_loopback
        or ip.is_link_local
        or ip.is_multicast
        or ip.is_unspecified
        or ip.is_reserved
        or (ip.version == 6 and ip.is_site_local)  # type: ignore[union-attr]
        or (ip.version == 4 and ip in _CGNAT)
        or not ip.is_global
    )


def plain_address(ip: IPAddress) -> IPAddress:
    """An IPv6 address carrying an IPv4 one (mapped, NAT64, 6to4) as that IPv4 address."""
    inner = embedded_ipv4(ip)
    return inner if inner is not None else ip


def is_own_listener(ip: IPAddress, port: int, listeners: Iterable[Listener]) -> bool:
    """Whether `ip:port` is (certainly) one of `listeners`, judged before connecting. A
    listener on 0.0.0.0 is also reachable at every local address: once connected, a socket
    whose local address equals its peer's went to this host (see intercept/passthrough)."""
    ip = plain_address(ip)
    for bound, bound_port in listeners:
        if port != bound_port:
            continue
        if ip.is_loopback or ip.is_unspecified:
            return True
        try:
            if plain_address(ipaddress.ip_address(bound.strip("[]"))) == ip:
                return True
        except ValueError:
            continue
    return False


async def resolve_host(host: str, port: int = 0) -> list[IPAddress]:
    """Every address of `host` for a TCP connection, in resolver order, without duplicates
    (an IP literal, bracketed or not, is returned without a lookup). Raises OSError
    (socket.gaierror) when the name does not resolve."""
    host = host.strip("[]")
    try:
        return [ipaddress.ip_address(host)]
    except ValueError:
        pass
    infos = await asyncio.get_running_loop().getaddrinfo(
        host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP
    )
    found: list[IPAddress] = []
    for family, *_, sockaddr in infos:
        if family not in (socket.AF_INET, socket.AF_INET6):
            continue
        ip = ipaddress.ip_address(str(sockaddr[0]).partition("%")[0])
        if ip not in found:
            found.append(ip)
    if not found:
        raise socket.gaierror(socket.EAI_NONAME, f"{host} has no IP address")
    return found


async def resolve_public(host: str, port: int = 0, *, allow_private: bool = False) -> list[IPAddress]:
    """`resolve_host`, refusing (NotPublicAddress) a name with any non-public address:
    one private answer among public ones is how a rebinding attack would look."""
    addresses = await resolve_host(host, port)
    if not allow_private:
        for ip in addresses:
            if not is_public_address(ip):
                raise NotPublicAddress(host, ip)
    return addresses


def parse_host_port(entry: str) -> tuple[str, int | None]:
    """`host`, `host:port`, `*.example.com:443`, `[2001:db8::1]:443` or a bare IPv6
    address, as (lower-case host or pattern, port or None). ValueError when malformed."""
    text = entry.strip().lower()
    port_text: str | None = None
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep or (rest and not rest.startswith(":")):
            raise ValueError("expected [IPv6 address]:port")
        port_text = rest[1:] if rest else None
    elif text.count(":") == 1:
        host, _, port_text = text.partition(":")
    else:
        host = text  # a bare IPv6 address has several colons and no port
    host = host.rstrip(".")
    if not host or any(c.isspace() or c in "/@" for c in host):
        raise ValueError("expected a host name or pattern, optionally with :port")
    if port_text is None:
        return host, None
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ValueError("the port must be 1-65535")
    return host, int(port_text)
