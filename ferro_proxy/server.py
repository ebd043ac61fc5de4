"""Starting and stopping the two listeners, with a graceful drain on SIGTERM."""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from collections.abc import Mapping
from dataclasses import dataclass

from aiohttp import web

from ferro_proxy.admin_app import create_admin_app
from ferro_proxy.config import GatewayConfig
from ferro_proxy.gateway import Gateway
from ferro_proxy.listener_limits import ConnectionGuard, GuardedRunner
from ferro_proxy.netpolicy import OWN_LISTENERS
from ferro_proxy.proxy_app import create_proxy_app

log = logging.getLogger("ferro_proxy.server")


def parse_listen(value: str, default_port: int) -> tuple[str, int]:
    value = value.strip()
    if value.startswith("["):  # [::1]:8080
        host, _, port = value[1:].partition("]:")
        return host, int(port or default_port)
    if value.count(":") == 1:
        host, port = value.split(":")
        return host or "127.0.0.1", int(port)
    if value.isdigit():
        return "127.0.0.1", int(value)
    return value or "127.0.0.1", default_port


@dataclass
class Running:
    gateway: Gateway
    proxy_runner: web.AppRunner
    admin_runner: web.AppRunner
    proxy_port: int
    admin_port: int
    proxy_host: str
    admin_host: str

    @property
    def proxy_url(self) -> str:
        return f"http://{self.proxy_host}:{self.proxy_port}"

    @property
    def admin_url(self) -> str:
        return f"http://{self.admin_host}:{self.admin_port}"

    async def drain_and_stop(self, drain_seconds: float = 20.0) -> None:
        """Readiness goes false, the proxy stops accepting, in-flight work gets `drain_seconds`."""
        gateway = self.gateway
        gateway.draining = True
        for site in list(self.proxy_runner.sites):
            await site.stop()
        deadline = time.monotonic() + drain_seconds
        while gateway.in_flight > 0 and time.monotonic() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.05)
        left = gateway.in_flight
        if left > 0:
            log.warning("drain timed out with %d requests in flight: ending them", int(left))
            gateway.shutting_down = True
            for task in list(gateway.handler_tasks):
                task.cancel()
            end_by = time.monotonic() + 1.0
            while gateway.handler_tasks and time.monotonic() < end_by:  # noqa: ASYNC110
                await asyncio.sleep(0.02)
        # Whatever is left has had its deadline: aiohttp must not wait its own 60 s for it.
        self.proxy_runner._shutdown_timeout = 0.5
        await self.proxy_runner.cleanup()
        await gateway.close()
        await self.admin_runner.cleanup()


async def start(
    config: GatewayConfig,
    *,
    listen: str = "127.0.0.1:8080",
    admin_listen: str = "127.0.0.1:8081",
    env: Mapping[str, str] | None = None,
    gateway: Gateway | None = None,
    config_source: str | None = None,
) -> Running:
    from ferro_proxy.admin.lifecycle import close_state, open_state, state_started

    gateway = gateway or Gateway(env)
    gateway.config_source = config_source
    from ferro_proxy import intercept

    interception = intercept.startup_settings(config, gateway.env)
    if interception is not None:  # the CA and the chain hook, before the chain is built
        intercept.prepare(gateway, interception)
    await open_state(gateway)  # stores and admin routes, before the chain is built
    try:
        await gateway.apply(config, actor="startup")
        await state_started(gateway, config, config_source)  # config version, file watch
    except BaseException:
        await close_state(gateway)
        raise
    for hook in list(gateway.services.get("startup_hooks", [])):
        await hook(gateway)
    metrics = gateway.metrics
    proxy_guard = ConnectionGuard("proxy", lambda: gateway.config.server.proxy, metrics)
    admin_guard = ConnectionGuard("admin", lambda: gateway.config.server.admin, metrics)
    proxy_runner = GuardedRunner(
        create_proxy_app(gateway), proxy_guard, handler_cancellation=True, access_log=None
    )
    admin_runner = GuardedRunner(create_admin_app(gateway), admin_guard, access_log=None)
    await proxy_runner.setup()
    await admin_runner.setup()
    phost, pport = parse_listen(listen, 8080)
    ahost, aport = parse_listen(admin_listen, 8081)
    if interception is not None:
        proxy_site = intercept.proxy_site(proxy_runner, phost, pport, gateway)
    else:
        proxy_site = web.TCPSite(proxy_runner, phost, pport, reuse_address=True)
    admin_site = web.TCPSite(admin_runner, ahost, aport, reuse_address=True)
    try:
        await proxy_site.start()
        await admin_site.start()
        if interception is not None and interception.transparent_listen:
            await intercept.start_transparent(gateway, interception.transparent_listen)
    except BaseException:  # a port in use: release pools, stores and watchers before failing
        await proxy_runner.cleanup()
        await admin_runner.cleanup()
        await gateway.close()
        raise
    pport = _bound_port(proxy_runner, pport)
    aport = _bound_port(admin_runner, aport)
    # Tunnels and outbound fetches refuse to connect back to these.
    gateway.services[OWN_LISTENERS] = [(phost, pport), (ahost, aport)]
    log.info(
        "listening",
        extra={
            "fields": {
                "proxy": f"{phost}:{pport}",
                "admin": f"{ahost}:{aport}",
                "providers": sorted(gateway.providers),
            }
        },
    )
    return Running(gateway, proxy_runner, admin_runner, pport, aport, phost, ahost)


def _bound_port(runner: web.AppRunner, fallback: int) -> int:
    for addr in runner.addresses:
        if isinstance(addr, tuple) and len(addr) >= 2:
            return int(addr[1])
    return fallback


async def serve_forever(
    config: GatewayConfig,
    *,
    listen: str,
    admin_listen: str,
    drain_seconds: float,
    config_source: str | None = None,
) -> int:
    running = await start(config, listen=listen, admin_listen=admin_listen, config_source=config_source)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("shutting down: draining", extra={"fields": {"drain_seconds": drain_seconds}})
    await running.drain_and_stop(drain_seconds)
    log.info("stopped")
    return 0
