"""The provider registry: every adapter module registers its `ProviderSpec`s here."""

from __future__ import annotations

import importlib
import logging
import pkgutil
from collections.abc import Mapping
from typing import TYPE_CHECKING

from ferro_proxy.config import GatewayConfig
from providers.base import Provider, ProviderSpec, resolve_settings

if TYPE_CHECKING:
    from ferro_proxy.gateway import Gateway

log = logging.getLogger("ferro_proxy.providers")

PROVIDERS: dict[str, ProviderSpec] = {}
_loaded = False

# Support modules that define no provider.
_NOT_ADAPTERS = {"base", "registry", "catalog", "aws_sigv4", "aws_eventstream", "google_auth", "chat_shape"}
_NOT_ADAPTERS |= {"token_cache", "gce_metadata", "google_external", "google_credentials", "entra_auth"}
_NOT_ADAPTERS |= {"aws_credentials"}


def register_provider(spec: ProviderSpec) -> ProviderSpec:
    PROVIDERS[spec.name] = spec
    return spec


def load_builtin_providers() -> dict[str, ProviderSpec]:
    """Import every adapter module in this package (each registers its specs on import).

    Adapters keep heavy optional imports inside their functions, so importing them is cheap.
    """
    global _loaded
    if not _loaded:  # not "if not PROVIDERS": one adapter imported early must not hide the rest
        import providers

        for info in pkgutil.iter_modules(providers.__path__):
            if info.name not in _NOT_ADAPTERS and not info.name.startswith(("_", "translate_")):
                importlib.import_module(f"providers.{info.name}")
        _loaded = True
    return PROVIDERS


def build_providers(config: GatewayConfig, env: Mapping[str, str], gateway: Gateway) -> dict[str, Provider]:
    """Every provider enabled by the environment or named in the config's `providers:`."""
    specs = load_builtin_providers()
    built: dict[str, Provider] = {}
    for name, spec in specs.items():
        settings_cfg = config.providers.get(name)
        if settings_cfg is not None and not settings_cfg.enabled:
            continue
        if settings_cfg is None and not spec.enabled_by_env(env):
            _warn_incomplete(spec, env)
            continue
        settings = resolve_settings(spec, settings_cfg, env)
        provider = spec.factory(settings, gateway)
        provider.spec = spec
        built[name] = provider
    return built


def _warn_incomplete(spec: ProviderSpec, env: Mapping[str, str]) -> None:
    """A provider whose key is set but which cannot form its URL is left off, loudly."""
    keys = [v for v in (spec.env_key, *spec.env_enables) if v and env.get(v)]
    missing = [v for v in spec.env_required if not env.get(v)]
    if keys and missing:
        log.warning(
            "provider %s not enabled: %s is set but %s is not", spec.name, keys[0], ", ".join(missing)
        )


def unknown_provider_names(config: GatewayConfig) -> list[str]:
    specs = load_builtin_providers()
    errors = [
        f"providers.{name}: unknown provider (known: {', '.join(sorted(specs))})"
        for name in config.providers
        if name not in specs
    ]
    for i, target in enumerate(config.targets):
        if target.virtual_key not in specs:
            errors.append(
                f"targets[{i}].virtual_key: unknown provider {target.virtual_key!r} (known: {', '.join(sorted(specs))})"
            )
    return errors
