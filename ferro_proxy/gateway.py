"""The gateway's live state: the current config and everything built from it.

A `Runtime` is one config version made concrete: providers, the filter chain, the router.
Requests take the runtime current when they arrive and keep it to the end, so a reload
(`Gateway.apply`) swaps in a new runtime atomically while in-flight requests finish on the
old one. Providers and filters whose settings did not change are carried over, keeping
their connection pools and state.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable, Mapping
from typing import Any

import msgspec

from ferro_proxy import redaction
from ferro_proxy.chain import Chain, Filter, build_filters
from ferro_proxy.config import ConfigError, GatewayConfig
from ferro_proxy.metrics import Metrics
from ferro_proxy.secret_sources import document_secrets, env_secrets
from providers.base import Provider
from providers.catalog import Catalog, load_catalog
from providers.registry import build_providers, unknown_provider_names

log = logging.getLogger("ferro_proxy.gateway")

# Hooks that adjust the built filter list for a config, e.g. put the auth filter first or
# add the mcp filter when `mcp_servers:` is set: fn(config, gateway, filters) -> filters.
# Filter modules register them at import (every module under filters/ is imported first).
CHAIN_HOOKS: list[Callable[[GatewayConfig, Gateway, list[Filter]], list[Filter]]] = []


class Runtime:
    def __init__(self, config: GatewayConfig, providers: dict[str, Provider], chain: Chain) -> None:
        self.config = config
        self.providers = providers
        self.chain = chain
        self.active = 0
        self.retired = False
        self._idle = asyncio.Event()
        self._idle.set()

    def enter(self) -> None:
        self.active += 1
        self._idle.clear()

    def leave(self) -> None:
        self.active -= 1
        if self.active == 0:
            self._idle.set()

    async def wait_idle(self, timeout: float | None = None) -> None:
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
        except TimeoutError:
            pass


class Gateway:
    """Process-wide state shared by the proxy and admin listeners."""

    def __init__(self, env: Mapping[str, str] | None = None, metrics: Metrics | None = None) -> None:
        self.env: Mapping[str, str] = dict(os.environ if env is None else env)
        self.metrics = metrics or Metrics()
        self.catalog: Catalog | None = None
        self._catalog_source: str | None = "<unset>"
        self.runtime: Runtime | None = None
        self.state: dict[str, Any] = {}  # survives reloads: breaker states, latency stats ...
        self.services: dict[str, Any] = {}  # shared helpers later parts register (stores, mcp ...)
        self.on_apply: list[Callable[[GatewayConfig], Any]] = []
        self.config_source: str | None = None
        self.draining = False
        self.shutting_down = False  # the drain deadline passed: what is left is being ended
        self.in_flight = 0
        self.handler_tasks: set[asyncio.Task[Any]] = set()
        self._apply_lock = asyncio.Lock()
        # Provider keys, admin keys, DSN passwords ... from the environment: never in any output.
        redaction.register_many(env_secrets(self.env))

    # -------------------------------------------------------------- views

    @property
    def config(self) -> GatewayConfig:
        assert self.runtime is not None, "gateway not started"
        return self.runtime.config

    @property
    def providers(self) -> dict[str, Provider]:
        assert self.runtime is not None, "gateway not started"
        return self.runtime.providers

    # -------------------------------------------------------------- building

    def _catalog_for(self, config: GatewayConfig) -> Catalog:
        source = config.model_catalog or self.env.get("FERRO_MODEL_CATALOG") or None
        if self.catalog is None or source != self._catalog_source:
            try:
                self.catalog = load_catalog(source)
            except (OSError, ValueError) as exc:
                raise ConfigError([f"model_catalog: cannot load {source}: {exc}"]) from None
            self._catalog_source = source
        return self.catalog

    def _assemble(self, config: GatewayConfig) -> tuple[dict[str, Provider], list[Filter], Filter]:
        """Providers, filters and router for `config`, built but not started.

        Every build-time check lives in these constructors, so `validate` (through `check`)
        and `serve` refuse the same configs with the same messages."""
        problems = unknown_provider_names(config)
        self._catalog_for(config)
        _register_config_secrets(config)  # first: a build error may quote one
        providers = {} if problems else build_providers(config, self.env, self)
        for provider in providers.values():
            settings = provider.settings
            redaction.register_many([settings.api_key, *settings.headers.values()])
        before = self.runtime
        self.runtime = _PendingRuntime(config, providers)  # filters read gateway.config while built
        try:
            try:
                filters = build_filters(config.plugins, self)
            except ConfigError as exc:
                raise ConfigError(problems + exc.errors) from None
            if problems:  # reported together with the filters' own errors
                raise ConfigError(problems)
            for hook in CHAIN_HOOKS:
                filters = hook(config, self, filters)
            from filters.router import Router

            router = Router(None, self)
        finally:
            self.runtime = before
        return providers, filters, router

    def check(self, config: GatewayConfig) -> None:
        """Raise ConfigError if `config` could not be served; nothing is started or kept."""
        catalog_before, source_before = self.catalog, self._catalog_source
        try:
            self._assemble(config)
        finally:
            self.catalog, self._catalog_source = catalog_before, source_before

    async def build_runtime(self, config: GatewayConfig) -> Runtime:
        """Build (and start) everything a config needs; raise ConfigError if it cannot be used."""
        previous = self.runtime
        catalog_before, source_before = self.catalog, self._catalog_source
        try:
            providers, fresh, router = self._assemble(config)
            if previous is not None:  # keep pools of unchanged providers
                for name, provider in list(providers.items()):
                    old = previous.providers.get(name)
                    if old is not None and old.settings == provider.settings:
                        providers[name] = old
            old_by_plugin: dict[bytes, Filter] = {}
            if previous is not None:
                for f in previous.chain.filters:
                    if f.plugin is not None:
                        old_by_plugin.setdefault(_plugin_identity(f.plugin), f)
            filters = []
            for f in fresh:
                reused = old_by_plugin.pop(_plugin_identity(f.plugin), None) if f.plugin is not None else None
                filters.append(reused or f)
            chain = Chain(filters, router)
            runtime = Runtime(config, providers, chain)
            self.runtime = _PendingRuntime(config, providers)  # filters may read gateway.config in start()
            for f in filters:
                if f not in (previous.chain.filters if previous else ()):
                    await f.start()
            await router.start()
            kept = set(map(id, previous.providers.values())) if previous is not None else set()
            for provider in providers.values():
                if id(provider) not in kept:
                    provider.start()
        except BaseException:
            self.catalog, self._catalog_source = catalog_before, source_before
            raise
        finally:
            self.runtime = previous
        return runtime

    async def apply(self, config: GatewayConfig, *, actor: str = "system") -> Runtime:
        """Make `config` current. On any error the running config stays as it was."""
        async with self._apply_lock:
            old = self.runtime
            runtime = await self.build_runtime(config)
            self.runtime = runtime
            for hook in self.on_apply:
                result = hook(config)
                if asyncio.iscoroutine(result):
                    await result
            if old is not None:
                asyncio.get_running_loop().create_task(self._retire(old, runtime))
            log.info(
                "config applied", extra={"fields": {"actor": actor, "providers": sorted(runtime.providers)}}
            )
            return runtime

    async def _retire(self, old: Runtime, new: Runtime) -> None:
        old.retired = True
        await old.wait_idle(timeout=self.config.request_timeout)
        kept_filters = set(map(id, new.chain.filters))
        for f in old.chain.filters:
            if id(f) not in kept_filters:
                try:
                    await f.close()
                except Exception:
                    log.exception("closing filter %s", f.label)
        kept = set(map(id, new.providers.values()))
        for provider in old.providers.values():
            if id(provider) not in kept:
                await provider.close()

    async def close(self) -> None:
        runtime = self.runtime
        if runtime is None:
            return
        await runtime.chain.close()
        for provider in runtime.providers.values():
            await provider.close()
        for service in list(self.services.values()):
            closer = getattr(service, "close", None)
            if closer is not None:
                result = closer()
                if asyncio.iscoroutine(result):
                    await result


def _register_config_secrets(config: GatewayConfig) -> None:
    """Every credential a config holds (keys, header values of providers and MCP servers, URL
    passwords and tokens, DSNs, key material) joins the redaction registry; kept after a
    reload, as a replaced key is still a secret."""
    redaction.register_many(document_secrets(msgspec.to_builtins(config)))


def _plugin_identity(plugin: Any) -> bytes:
    """PluginConfig is a mutable (unhashable) Struct: unchanged plugins are found by their encoding."""
    return msgspec.json.encode(plugin)


class _PendingRuntime(Runtime):
    """The runtime being built: enough for filters that read config or providers in __init__."""

    def __init__(self, config: GatewayConfig, providers: dict[str, Provider]) -> None:
        self.config = config
        self.providers = providers
        self.chain = Chain([], Filter(None, None))  # type: ignore[arg-type]
        self.active = 0
