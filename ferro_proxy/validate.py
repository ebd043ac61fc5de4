"""Full validation of a config file: schema, providers, filters' own configs.

Every error is reported at once: when the schema check fails, the plugins are still
checked from the raw document, so one run lists them all.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ferro_proxy.chain import FILTERS, load_builtin_filters
from ferro_proxy.config import ConfigError, convert, expand_env, load_config, parse_document
from ferro_proxy.gateway import Gateway


def _plugin_errors(plugins: list[tuple[int, Any, Any, Any]]) -> list[str]:
    """Check (index, name, type, config) of each plugin against the filter registry."""
    load_builtin_filters()
    errors: list[str] = []
    for i, name, type_, config in plugins:
        cls = FILTERS.get(name)
        if cls is None:
            errors.append(f"plugins[{i}].name: unknown plugin {name!r} (known: {', '.join(sorted(FILTERS))})")
            continue
        if type_ and type_ != cls.type:
            errors.append(f"plugins[{i}].type: {name} is of type {cls.type!r}, not {type_!r}")
        try:
            cls.Config and convert(cls.Config, config, path=f"plugins[{i}].config")
        except ConfigError as exc:
            errors.extend(exc.errors)
    return errors


def _raw_plugins(path: str, known_errors: list[str]) -> list[tuple[int, Any, Any, Any]]:
    """The plugins of a document that failed the schema check, minus those already reported."""
    try:
        document = expand_env(parse_document(Path(path).read_text(), path))
    except (OSError, ConfigError):
        return []
    plugins = document.get("plugins") if isinstance(document, dict) else None
    if not isinstance(plugins, list):
        return []
    out = []
    for i, p in enumerate(plugins):
        if not isinstance(p, dict) or not isinstance(p.get("name"), str):
            continue
        if any(e.startswith(f"plugins[{i}]") for e in known_errors):
            continue
        config = p.get("config") if p.get("config") is not None else {}
        out.append((i, p["name"], p.get("type"), config))
    return out


def validate_file(path: str, env: Mapping[str, str] | None = None) -> list[str]:
    """Every error `serve` would refuse this file for, in the same words.

    A config that loads is checked by building what `serve` builds (providers, filters, the
    router), without starting anything; one that does not load still has its plugins checked
    from the raw document, so one run lists every error."""
    try:
        config = load_config(path, env)
    except ConfigError as exc:
        return exc.errors + _plugin_errors(_raw_plugins(path, exc.errors))
    try:
        Gateway(env=env).check(config)
    except ConfigError as exc:
        return exc.errors
    return []
