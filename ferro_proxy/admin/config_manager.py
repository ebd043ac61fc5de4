"""Applying a config document and recording it as a version.

Every accepted config (the startup file, the admin API, a changed file) goes through
`ConfigManager.apply_document`: validated, applied atomically with `Gateway.apply`, then
stored as a new version with actor, source and time. Documents are stored as written
(`${VAR}` references unexpanded), so secrets from the environment never reach the store.
A document from the admin API (source `admin-api`, also when one is rolled back to) is
literal: see `literal_config`. The allowlist it may use comes from the operator's config
(the startup config or a reloaded file), never from the API.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ferro_proxy.admin.literal_config import API_SOURCE, api_expander
from ferro_proxy.config import (
    ConfigError,
    GatewayConfig,
    config_from_data,
    expand_env,
    parse_document,
    to_builtins,
    unexpanded_errors,
)
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
        self.operator_allowlist: frozenset[str] = frozenset()  # admin_env_allowlist of the file config
        self._lock = asyncio.Lock()

    @property
    def store(self):
        return self.gateway.services.get("configs")

    def expander(self, source: str):
        """How `${VAR}` expands in a document from `source`."""
        env = self.gateway.env
        if source == API_SOURCE:
            return api_expander(self.document, self.operator_allowlist, env)
        return lambda document: expand_env(document, env)

    def build(self, document: Any, source: str) -> GatewayConfig:
        if not isinstance(document, dict):
            raise ConfigError(["<root>: expected an object"], source)
        return config_from_data(document, source, expand=self.expander(source))

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
        self.operator_allowlist = frozenset(config.admin_env_allowlist)
        await self._record(document, "startup", source or "defaults", None, dedupe=True)

    async def apply_document(
        self, document: Any, *, actor: str, source: str, rolled_back_from: int | None = None
    ) -> ConfigVersion | None:
        """Validate and apply `document`; raise ConfigError (running config kept) if it is bad.

        `source` is `admin-api` for a document an admin sent (literal), else the operator's
        file it came from."""
        metrics = self.gateway.metrics
        async with self._lock:
            try:
                config = self.build(document, source)
                try:
                    await self.gateway.apply(config, actor=actor)
                except ConfigError as exc:  # a filter's own checks, on the expanded document
                    expanded = self.expander(source)(document)
                    raise ConfigError(unexpanded_errors(exc.unredacted, document, expanded), source) from None
            except ConfigError:
                metrics.config_reloads.labels("error").inc()
                raise
            metrics.config_reloads.labels("success").inc()
            self.document = document
            if source != API_SOURCE:
                self.operator_allowlist = frozenset(config.admin_env_allowlist)
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
