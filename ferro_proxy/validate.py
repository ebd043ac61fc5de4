"""Full validation of a config file: schema, providers, filters' own configs."""

from __future__ import annotations

from ferro_proxy.chain import FILTERS, load_builtin_filters
from ferro_proxy.config import ConfigError, convert, load_config
from providers.registry import unknown_provider_names


def validate_file(path: str) -> list[str]:
    try:
        config = load_config(path)
    except ConfigError as exc:
        return exc.errors
    errors = unknown_provider_names(config)
    load_builtin_filters()
    for i, plugin in enumerate(config.plugins):
        cls = FILTERS.get(plugin.name)
        if cls is None:
            errors.append(
                f"plugins[{i}].name: unknown plugin {plugin.name!r} (known: {', '.join(sorted(FILTERS))})"
            )
            continue
        if plugin.type and plugin.type != cls.type:
            errors.append(f"plugins[{i}].type: {plugin.name} is of type {cls.type!r}, not {plugin.type!r}")
        try:
            cls.Config and convert(cls.Config, plugin.config, path=f"plugins[{i}].config")
        except ConfigError as exc:
            errors.extend(exc.errors)
    return errors
