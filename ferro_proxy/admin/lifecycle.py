"""Bringing state and control up with the gateway (called from `ferro_proxy.server.start`).

Before the first apply: open the stores (so the auth filter sees the key store) and
register the admin routes. After it: record the startup config as a version and start
watching the config file.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import ferro_proxy.admin  # noqa: F401  (registers the admin routes)
from ferro_proxy.admin.config_manager import manager_for
from ferro_proxy.admin.credentials import validator_for
from ferro_proxy.config import GatewayConfig
from ferro_proxy.gateway import Gateway
from ferro_proxy.reload import ConfigWatcher
from ferro_proxy.stores.hub import open_stores

log = logging.getLogger("ferro_proxy.state")


async def open_state(gateway: Gateway) -> None:
    await open_stores(gateway)
    validator = validator_for(gateway)  # warns now if bootstrap keys are enabled
    try:  # known from the start, so keyless /v1 calls have an answer if the store goes down
        await validator.proxy_keys_exist()
    except Exception as exc:
        log.warning("could not tell whether proxy keys exist yet (%s)", type(exc).__name__)


async def state_started(gateway: Gateway, config: GatewayConfig, source: str | None) -> None:
    manager = manager_for(gateway)
    await manager.record_startup(config, source)
    interval = float(gateway.env.get("FERRO_CONFIG_WATCH_INTERVAL") or 1.0)
    if source and interval > 0 and "config_watcher" not in gateway.services:
        try:
            text = await asyncio.to_thread(Path(source).read_text)
        except OSError:
            text = None
        watcher = ConfigWatcher(manager, source, interval).start(text)
        gateway.services["config_watcher"] = watcher
        log.info("watching the config file", extra={"fields": {"path": source, "interval_s": interval}})
    # Gateway.close() closes services in order: the stores last, after their writers.
    gateway.services["stores"] = gateway.services.pop("stores")


async def close_state(gateway: Gateway) -> None:
    """Release what `open_state` opened when the gateway fails to start."""
    for name in ("config_watcher", "stores"):
        service = gateway.services.pop(name, None)
        if service is not None:
            await service.close()
