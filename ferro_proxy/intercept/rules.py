"""`ferro-proxy intercept-rules`: the iptables (nat/OUTPUT) rules that send a pod's provider
traffic to the transparent listener, for an init container with NET_ADMIN to apply.

Like Istio's init container, traffic from the gateway's own user id is never redirected
(else its upstream calls would loop back into it), and loopback is left alone. Provider
hosts are resolved now (their addresses can change: re-run on restart, or use
`--all-destinations`, which redirects every destination on the ports and lets the
transparent listener read the SNI and tunnel what it does not intercept).
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable

from ferro_proxy.config import InterceptConfig
from ferro_proxy.intercept.hosts import HostTable
from ferro_proxy.server import parse_listen

CHAIN = "FERRO_INTERCEPT"
Resolver = Callable[[str], list[str]]


def resolve_host(host: str) -> list[str]:
    infos = socket.getaddrinfo(host, 443, type=socket.SOCK_STREAM)
    return sorted({str(info[4][0]) for info in infos})


def build_rules(
    config: InterceptConfig,
    *,
    redirect_port: int | None = None,
    gateway_uid: int = 10001,
    ports: list[int] | None = None,
    all_destinations: bool = False,
    addresses: dict[str, list[str]] | None = None,
    resolve: bool = True,
    resolver: Resolver = resolve_host,
) -> list[str]:
    """Shell lines (`iptables …` / `ip6tables …`) that set the redirect up from scratch."""
    if redirect_port is None:
        if not config.transparent_listen:
            raise ValueError("set intercept.transparent_listen in the config or pass --redirect-port")
        redirect_port = parse_listen(config.transparent_listen, 15001)[1]
    if not 0 < redirect_port < 65536:
        raise ValueError(f"redirect port {redirect_port} is not a port number")
    ports = ports or [443]
    port_match = (
        f"--dport {ports[0]}" if len(ports) == 1 else f"-m multiport --dports {','.join(map(str, ports))}"
    )
    out = [
        "#!/bin/sh",
        "# ferro-proxy transparent interception: provider traffic -> the gateway's transparent listener",
        "set -e",
    ]
    v4: list[str] = []
    v6: list[str] = []
    notes: list[str] = []
    if all_destinations:
        v4, v6 = ["0.0.0.0/0"], ["::/0"]
    else:
        table = HostTable(config)
        given = addresses or {}
        for host in table.names:
            if any(c in host for c in "*?["):
                notes.append(f"# {host}: a pattern has no fixed addresses; use --all-destinations for it")
                continue
            found = list(given.get(host, []))
            if not found and resolve:
                try:
                    found = resolver(host)
                except OSError as exc:
                    notes.append(f"# {host}: not resolved ({exc.strerror or exc}); pass --address {host}=IP")
            for addr in found:
                ip = ipaddress.ip_address(addr)
                (v6 if ip.version == 6 else v4).append(f"{ip}/{ip.max_prefixlen}")
                notes.append(f"# {host} -> {ip}")
    out += notes
    for tool, cidrs, loopback in (("iptables", v4, "127.0.0.0/8"), ("ip6tables", v6, "::1/128")):
        if not cidrs:
            continue
        out += [
            f"{tool} -t nat -N {CHAIN} 2>/dev/null || {tool} -t nat -F {CHAIN}",
            f"{tool} -t nat -C OUTPUT -p tcp -j {CHAIN} 2>/dev/null || {tool} -t nat -A OUTPUT -p tcp -j {CHAIN}",
            f"{tool} -t nat -A {CHAIN} -m owner --uid-owner {gateway_uid} -j RETURN",
            f"{tool} -t nat -A {CHAIN} -d {loopback} -j RETURN",
        ]
        for cidr in sorted(set(cidrs)):
            out.append(
                f"{tool} -t nat -A {CHAIN} -p tcp -d {cidr} {port_match} -j REDIRECT --to-ports {redirect_port}"
            )
    if not v4 and not v6:
        out.append("# no addresses to redirect")
    return out
