"""Metric label values that come from client input, bounded to what the gateway resolved.

A `model` label shows a name the gateway knows: one in the model catalog (for that provider,
or for any provider before one was chosen), an alias or its target, a target's `model:` or
literal `models:` entry, or a provider's declared `models:`. A `provider` label shows a
configured provider. Anything else a client sends is counted under `other`, so random names
add at most one series per metric. (Endpoint labels are fixed route names already.)
"""

from __future__ import annotations

import weakref
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ferro_proxy.gateway import Gateway

OTHER = "other"
NONE = "none"
_GLOB = frozenset("*?[")

# gateway -> (the runtime it was computed for, declared model names)
_DECLARED: weakref.WeakKeyDictionary[Gateway, tuple[object, frozenset[str]]] = weakref.WeakKeyDictionary()


def model_label(gateway: Gateway, provider: str | None, model: str | None) -> str:
    if not model or model == NONE:
        return NONE
    if model in _declared(gateway):
        return model
    catalog = gateway.catalog
    if catalog is not None:
        if provider and provider != NONE:
            if catalog.get(provider, model) is not None:
                return model
        elif catalog.providers_of(model):
            return model
    return OTHER


def provider_label(gateway: Gateway, provider: str | None) -> str:
    if not provider or provider == NONE:
        return NONE
    runtime = gateway.runtime
    return provider if runtime is not None and provider in runtime.providers else OTHER


def _declared(gateway: Gateway) -> frozenset[str]:
    runtime = gateway.runtime
    if runtime is None:
        return frozenset()
    cached = _DECLARED.get(gateway)
    if cached is not None and cached[0] is runtime:
        return cached[1]
    names: set[str] = set()
    config = runtime.config
    for alias, target in config.aliases.items():
        names.add(alias)
        names.add(target)
        prefix, sep, rest = target.partition("/")
        if sep and prefix in runtime.providers:
            names.add(rest)
    for t in config.targets:
        if t.model:
            names.add(t.model)
        names.update(m for m in t.models if not _GLOB.intersection(m))
    for settings in config.providers.values():
        names.update(m for m in settings.models if not _GLOB.intersection(m))
    for provider in runtime.providers.values():
        models = getattr(provider.settings, "models", None) or ()
        names.update(m for m in models if isinstance(m, str) and not _GLOB.intersection(m))
    declared = frozenset(names)
    _DECLARED[gateway] = (runtime, declared)
    return declared
