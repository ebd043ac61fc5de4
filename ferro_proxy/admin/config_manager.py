"""Applying a config document and recording it as a version.

Every accepted config (the startup file, the admin API, a changed file) goes through
`ConfigManager.apply_document`: validated, applied atomically with `Gateway.apply`, then
stored as a new version with actor, source and time. Documents are stored as written
(`${VAR}` references unexpanded), so secrets from the environment never reach the store.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ferro_proxy.config import ConfigError, GatewayConfig, config_from_data, parse_document, to_builtins
from ferro_proxy.stores.base import document_digest
from ferro_proxy.stores.records import ConfigVersion

if TYPE_CHECKING:
    from ferro_proxy.gateway import Gateway

log = logging.getLogger("ferro_proxy.config")


class ConfigManager:
    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway
        self.document: dict[str, Any] = {}  # the document behind the running config
        self.version: int | None = None
        self._lock = asyncio.Lock()

    @property
    def store(self):
        return self.gateway.services.get("configs")

    def build(self, document: Any, source: str) -> GatewayConfig:
        if not isinstance(document, dict):
            raise ConfigError(["<root>: expected an object"], source)
        return config_from_data(document, source, env=self.gateway.env)

    async def record_startup(self, config: GatewayConfig, source: str | None) -> None:
        """Record the config the gateway started with (unless it equals the newest version)."""
        document: Any = None
        if source:
            try:
                document = parse_document(await asyncio.to_thread(Path(source).read_text), source)
            except (OSError, ConfigError):
                document = None
        if not isinstance(document, dict):
            document = to_builtins(config)
        self.document = document
        await self._record(document, "startup", source or "defaults", None, dedupe=True)

    async def apply_document(
        self, document: Any, *, actor: str, source: str, rolled_back_from: int | None = None
    ) -> ConfigVersion | None:
        """Validate and apply `document`; raise ConfigError (running config kept) if it is bad."""
        metrics = self.gateway.metrics
        async with self._lock:
            try:
                config = self.build(document, source)
                await self.gateway.apply(config, actor=actor)
            except ConfigError:
                metrics.config_reloads.labels("error").inc()
                raise
            metrics.config_reloads.labels("success").inc()
            self.document = document
            return await self._record(document, actor, source, rolled_back_from, dedupe=False)

    async def _record(
        self, document: dict[str, Any], actor: str, source: str, rolled_back_from: int | None, *, dedupe: bool
    ) -> ConfigVersion | None:
        store = self.store
        if store is None:
            return None
        try:
            if dedupe:
                latest = await store.latest()
                if latest is not None and latest.digest == document_digest(document):
                    self.version = latest.version
                    return latest
            version = await store.add(document, actor, source, rolled_back_from)
        except Exception as exc:  # the config is live; only its history entry is missing
            log.error("could not store the config version: %s: %s", type(exc).__name__, exc)
            return None
        self.version = version.version
        return version


def manager_for(gateway: Gateway) -> ConfigManager:
    manager = gateway.services.get("config_manager")
    if manager is None:
        manager = ConfigManager(gateway)
        gateway.services["config_manager"] = manager
    return manager
