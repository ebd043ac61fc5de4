"""`/admin/config`: read (secrets redacted), replace, patch, reset, history and rollback.

POST replaces the whole config (201, a new version); PUT merges a JSON merge patch
(RFC 7386) into the current document; DELETE resets to the defaults (`{}`: every provider
enabled by the environment, routed by model name). Values sent back as `[REDACTED]`
keep the current secret at that place. Documents sent here are literal (`${VAR}` is refused
unless the config file allows the name: see `literal_config`); rolling back to a version
that came from the operator's file applies it as that file did.
"""

from __future__ import annotations

import re
from typing import Any

from aiohttp import web

from ferro_proxy.admin.config_manager import ConfigManager, manager_for
from ferro_proxy.admin.http import (
    GATEWAY,
    audit,
    int_param,
    json_response,
    not_found,
    principal,
    read_document,
)
from ferro_proxy.admin.literal_config import API_SOURCE
from ferro_proxy.admin.redact import redact, restore_redacted
from ferro_proxy.config import ConfigError
from ferro_proxy.errors import GatewayError, bad_request
from ferro_proxy.stores.records import ConfigVersion

_VERSION_ID = re.compile(r"[0-9]{1,19}")
MAX_VERSION_ID = 2**63 - 1  # the SQL stores' integer range


def _manager(request: web.Request) -> ConfigManager:
    return manager_for(request.app[GATEWAY])


def merge_patch(target: Any, patch: Any) -> Any:
    if not isinstance(patch, dict):
        return patch
    out = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = merge_patch(out.get(key), value)
    return out


async def _apply(
    request: web.Request,
    document: Any,
    action: str,
    rolled_back_from: int | None = None,
    source: str = API_SOURCE,
) -> ConfigVersion | None:
    manager = _manager(request)
    if not isinstance(document, dict):
        raise bad_request("the config must be a JSON (or YAML) object", code="invalid_config")
    try:
        document = restore_redacted(document, manager.document)
    except ValueError as exc:
        raise bad_request(str(exc), code="invalid_config") from None
    try:
        version = await manager.apply_document(
            document, actor=principal(request).actor, source=source, rolled_back_from=rolled_back_from
        )
    except ConfigError as exc:
        raise GatewayError(400, "invalid config: " + "; ".join(exc.errors), code="invalid_config") from None
    detail: dict[str, Any] = {"version": version.version if version else None}
    if rolled_back_from is not None:
        detail["rolled_back_from"] = rolled_back_from
    await audit(request, action, "config", detail)
    return version


def _version_json(
    version: ConfigVersion | None, manager: ConfigManager, with_config: bool = True
) -> dict[str, Any]:
    out: dict[str, Any] = version.summary() if version else {"version": manager.version}
    if with_config:
        out["config"] = redact(version.document if version else manager.document)
    return out


async def get_config(request: web.Request) -> web.Response:
    manager = _manager(request)
    store = request.app[GATEWAY].services.get("configs")
    version = await store.get(manager.version) if store is not None and manager.version else None
    return json_response(_version_json(version, manager))


async def replace_config(request: web.Request) -> web.Response:
    version = await _apply(request, await read_document(request), "config.replace")
    return json_response(_version_json(version, _manager(request)), status=201)


async def patch_config(request: web.Request) -> web.Response:
    patch = await read_document(request)
    document = merge_patch(_manager(request).document, patch)
    version = await _apply(request, document, "config.patch")
    return json_response(_version_json(version, _manager(request)))


async def reset_config(request: web.Request) -> web.Response:
    version = await _apply(request, {}, "config.reset")
    return json_response(_version_json(version, _manager(request)))


async def config_history(request: web.Request) -> web.Response:
    store = request.app[GATEWAY].services.get("configs")
    if store is None:
        raise GatewayError(501, "the config store is not enabled", code="not_implemented")
    limit = int_param(request, "limit", 50, low=1, high=500)
    offset = int_param(request, "offset", 0)
    with_config = request.query.get("include_config", "true").lower() not in ("0", "false", "no")
    versions, total = await store.history(limit, offset)
    manager = _manager(request)
    return json_response(
        {
            "object": "list",
            "current_version": manager.version,
            "total": total,
            "data": [_version_json(v, manager, with_config) for v in versions],
        }
    )


async def rollback_config(request: web.Request) -> web.Response:
    store = request.app[GATEWAY].services.get("configs")
    if store is None:
        raise GatewayError(501, "the config store is not enabled", code="not_implemented")
    raw = request.match_info["version"]
    if not _VERSION_ID.fullmatch(raw) or not 1 <= int(raw) <= MAX_VERSION_ID:
        raise bad_request(f"version: must be an integer from 1 to {MAX_VERSION_ID}", param="version")
    target = await store.get(int(raw))
    if target is None:
        raise not_found(f"config version {raw}")
    # A version from the API stays literal; one from the operator's file expands as the file did.
    version = await _apply(
        request,
        target.document,
        "config.rollback",
        rolled_back_from=target.version,
        source=target.source,
    )
    return json_response(_version_json(version, _manager(request)))
