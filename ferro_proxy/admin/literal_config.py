"""Configs sent through the admin API are literal: `${VAR}` expands only where the operator put it.

A string with `${` in an API document is refused (400, naming its path) unless

- the same string is at the same place in the running document: the operator's own
  reference (from the config file), kept by a merge patch or a GET-edit-POST round trip;
  it expands as it does in the file; or
- every name it references is on `admin_env_allowlist` of the operator's config file;
  only those names expand.

`admin_env_allowlist` itself can only be changed in the file.
"""

from __future__ import annotations

import typing
from typing import Any

from ferro_proxy.config import ENV_REFERENCE, ConfigError, expand_env

API_SOURCE = "admin-api"


def _join(path: str, key: str | int) -> str:
    if isinstance(key, int):
        return f"{path}[{key}]"
    return f"{path}.{key}" if path else str(key)


class _Expander:
    def __init__(self, allowlist: frozenset[str], env: typing.Mapping[str, str]) -> None:
        self.allowlist = allowlist
        self.env = env
        self.errors: list[str] = []

    def walk(self, value: Any, running: Any, path: str) -> Any:
        if isinstance(value, dict):
            here = running if isinstance(running, dict) else {}
            return {k: self.walk(v, here.get(k), _join(path, k)) for k, v in value.items()}
        if isinstance(value, list):
            here = running if isinstance(running, list) else []
            return [
                self.walk(v, here[i] if i < len(here) else None, _join(path, i)) for i, v in enumerate(value)
            ]
        if not isinstance(value, str) or "${" not in value:
            return value
        if isinstance(running, str) and running == value:
            return expand_env(value, self.env)
        names = [m.group(1) for m in ENV_REFERENCE.finditer(value)]
        refused = sorted({n for n in names if n not in self.allowlist})
        if not names or refused or "${" in ENV_REFERENCE.sub("", value):
            detail = f" (not on admin_env_allowlist: {', '.join(refused)})" if refused else ""
            self.errors.append(
                f'{path or "<root>"}: "${{...}}" is not allowed in configs sent through the admin API{detail}'
            )
            return value
        return expand_env(value, {n: self.env[n] for n in names if n in self.env})


# What the gateway reads or reaches on its own (a catalog file or URL, outbound fetch and
# interception policy, listener limits): an admin key must not turn these into a file read or
# a way into the pod network.
FILE_ONLY = ("model_catalog", "fetch", "intercept", "server")


def file_only_changes(document: Any, running: Any) -> list[str]:
    """Errors for API changes the operator's file must make, and for a provider's base URL
    moved to a new host while its configured key stays: the key would follow it."""
    if not isinstance(document, dict):
        return []
    before = running if isinstance(running, dict) else {}
    errors = [
        f"{key}: can only be changed in the config file"
        for key in FILE_ONLY
        if key in document and document[key] != before.get(key)
    ]
    providers = document.get("providers")
    old_providers = before.get("providers") if isinstance(before.get("providers"), dict) else {}
    if isinstance(providers, dict):
        for name, settings in providers.items():
            if not isinstance(settings, dict) or "base_url" not in settings:
                continue
            old = old_providers.get(name) if isinstance(old_providers.get(name), dict) else {}
            if settings["base_url"] == old.get("base_url"):
                continue
            key = settings.get("api_key")
            if not isinstance(key, str) or not key or "${" in key or key == old.get("api_key"):
                errors.append(
                    f"providers.{name}.base_url: a new base URL sent through the admin API needs a new "
                    "literal api_key in the same change (the configured key never follows it)"
                )
    return errors


def api_expander(
    running: Any, allowlist: typing.Iterable[str], env: typing.Mapping[str, str]
) -> typing.Callable[[Any], Any]:
    """An `expand` for `config_from_data` that treats `document` as sent through the admin API."""
    allowed = frozenset(allowlist)

    def expand(document: Any) -> Any:
        errors: list[str] = []
        if isinstance(document, dict) and "admin_env_allowlist" in document:
            sent = document["admin_env_allowlist"] or []
            if not (
                isinstance(sent, list) and all(isinstance(n, str) for n in sent) and set(sent) == allowed
            ):
                errors.append("admin_env_allowlist: can only be changed in the config file")
        errors.extend(file_only_changes(document, running))
        expander = _Expander(allowed, env)
        out = expander.walk(document, running, "")
        errors.extend(expander.errors)
        if errors:
            raise ConfigError(errors, API_SOURCE)
        return out

    return expand
