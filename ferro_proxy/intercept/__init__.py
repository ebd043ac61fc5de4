"""Legacy-app interception: the gateway as an HTTP(S) forward proxy that terminates TLS
for provider hosts with its own CA and runs those requests through the filter chain.

`ferro_proxy.server` calls `prepare` before the first config is applied, `proxy_site`
instead of a plain TCPSite for the proxy listener, and `start_transparent` for the
optional transparent listener. Everything here is off unless `intercept.enabled: true`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

import msgspec
from aiohttp import web

from ferro_proxy.config import ConfigError, GatewayConfig, InterceptConfig

if TYPE_CHECKING:
    from ferro_proxy.gateway import Gateway
    from ferro_proxy.intercept.ca import CertificateAuthority

CA_SERVICE = "intercept_ca"
INTERCEPTOR_SERVICE = "interceptor"


def startup_settings(config: GatewayConfig, env: Mapping[str, str]) -> InterceptConfig | None:
    """The interception settings to start with, or None when it is off. The environment can
    switch it on for a sidecar whose shared config does not (the Kubernetes injector does):
    FERRO_INTERCEPT=true, FERRO_INTERCEPT_CA_DIR, FERRO_TRANSPARENT_LISTEN."""
    settings = config.intercept
    if not settings.enabled and env.get("FERRO_INTERCEPT", "").lower() not in ("true", "1", "yes"):
        return None
    return msgspec.structs.replace(
        settings,
        enabled=True,
        ca_dir=settings.ca_dir or env.get("FERRO_INTERCEPT_CA_DIR") or None,
        transparent_listen=settings.transparent_listen or env.get("FERRO_TRANSPARENT_LISTEN") or None,
    )


def prepare(gateway: Gateway, settings: InterceptConfig) -> CertificateAuthority:
    """Load (or create) the CA, put the `intercept` filter in every chain, serve /ca.pem.
    With a CA directory, also write `bundle.pem` there (system roots plus this CA) for apps."""
    from ferro_proxy.admin_app import ADMIN_ROUTES
    from ferro_proxy.intercept.ca import CAError, CertificateAuthority, write_bundle

    try:
        ca = CertificateAuthority.load_or_create(settings.ca_dir, settings.ca_cert, settings.ca_key)
        if settings.ca_dir:
            write_bundle(ca, settings.ca_dir)
    except CAError as exc:
        raise ConfigError([f"intercept: {exc}"]) from None
    gateway.services[CA_SERVICE] = ca
    from ferro_proxy.intercept.requests import register_chain_hook

    register_chain_hook()
    if install_ca_route not in ADMIN_ROUTES:
        ADMIN_ROUTES.append(install_ca_route)
    return ca


def proxy_site(runner: web.AppRunner, host: str, port: int, gateway: Gateway) -> web.TCPSite:
    """The proxy listener's site: CONNECT-aware when interception is on."""
    from ferro_proxy.intercept.listener import InterceptingSite, Interceptor

    ca = gateway.services.get(CA_SERVICE)
    if ca is None or runner.server is None:
        return web.TCPSite(runner, host, port, reuse_address=True)
    interceptor = Interceptor(gateway, runner.server, ca)
    gateway.services[INTERCEPTOR_SERVICE] = interceptor
    return InterceptingSite(runner, host, port, interceptor, reuse_address=True)


async def start_transparent(gateway: Gateway, listen: str) -> object:
    """The transparent listener (connections iptables redirected to it); returns its server."""
    from ferro_proxy.intercept.transparent import start_transparent_listener

    interceptor = gateway.services[INTERCEPTOR_SERVICE]
    return await start_transparent_listener(interceptor, listen)


async def ca_pem(request: web.Request) -> web.Response:
    from ferro_proxy.admin_app import ADMIN_GATEWAY

    ca = request.app[ADMIN_GATEWAY].services.get(CA_SERVICE)
    if ca is None:
        raise web.HTTPNotFound()
    return web.Response(
        body=ca.cert_pem,
        content_type="application/x-pem-file",
        headers={"Content-Disposition": 'attachment; filename="ferro-proxy-ca.pem"'},
    )


def install_ca_route(app: web.Application, gateway: Gateway) -> None:
    """GET /ca.pem on the admin listener: the CA certificate (public; never the key)."""
    if CA_SERVICE in gateway.services:
        app.router.add_get("/ca.pem", ca_pem)
