"""`/admin/dashboard` (summary), `/admin/providers` and `/admin/health`."""

from __future__ import annotations

import time
from typing import Any

from aiohttp import web

from ferro_proxy.admin.http import GATEWAY, json_response, principal
from ferro_proxy.admin.redact import redact
from ferro_proxy.gateway import Gateway
from ferro_proxy.health import health_report
from ferro_proxy.stores.base import LogQuery


def _router_targets(gateway: Gateway) -> dict[str, Any]:
    runtime = gateway.runtime
    if runtime is None:
        return {}
    detail = runtime.chain.terminal.health()
    return detail if isinstance(detail, dict) else {}


# A provider is as healthy as its worst target circuit.
_CIRCUIT_RANK = {"open": 3, "half_open": 2, "half-open": 2, "closed": 1}


def providers_view(gateway: Gateway) -> list[dict[str, Any]]:
    targets = _router_targets(gateway)
    out = []
    for name, provider in sorted(gateway.providers.items()):
        spec = getattr(provider, "spec", None)
        entry: dict[str, Any] = {
            "name": name,
            "display": getattr(spec, "display", name),
            "base_url": redact(provider.settings.base_url),
            "key_configured": bool(provider.settings.api_key),
            "capabilities": sorted(getattr(spec, "capabilities", ()) or ()),
            "models": list(provider.settings.models),
            "health": redact(provider.health()),
        }
        own = {
            key: detail
            for key, detail in targets.items()
            if isinstance(detail, dict) and (detail.get("provider") or key) == name
        }
        if own:
            entry["targets"] = own
            states = [str(d.get("state") or d.get("circuit") or "closed") for d in own.values()]
            entry["circuit"] = max(states, key=lambda s: _CIRCUIT_RANK.get(s, 0))
        out.append(entry)
    return out


async def list_providers(request: web.Request) -> web.Response:
    gateway = request.app[GATEWAY]
    return json_response({"object": "list", "data": providers_view(gateway)})


async def admin_health(request: web.Request) -> web.Response:
    gateway = request.app[GATEWAY]
    report = health_report(gateway, detailed=True)  # the route needs read_only or admin
    hub = gateway.services.get("stores")
    if hub is not None:
        report["stores"] = hub.health()
    manager = gateway.services.get("config_manager")
    report["config_version"] = manager.version if manager else None
    return json_response(redact(report))


async def dashboard_summary(request: web.Request) -> web.Response:
    gateway = request.app[GATEWAY]
    now = time.time()
    keys_store = gateway.services.get("keys")
    keys = await keys_store.list() if keys_store is not None else []
    logs: dict[str, Any] = {"enabled": False, "total": 0}
    log_store = gateway.services.get("logs")
    if log_store is not None:
        _, total = await log_store.query(LogQuery(limit=1))
        logs = {"enabled": True, "total": total}
    who = principal(request)
    manager = gateway.services.get("config_manager")
    providers = providers_view(gateway)
    return json_response(
        {
            "viewer": {"name": who.name, "key_id": who.key_id, "scopes": sorted(who.scopes)},
            "providers": {
                "total": len(providers),
                "available": sum(1 for p in providers if p.get("circuit") in (None, "closed")),
            },
            "keys": {
                "total": len(keys),
                "active": sum(1 for k in keys if k.status(now) == "active"),
                "revoked": sum(1 for k in keys if k.status(now) == "revoked"),
                "expired": sum(1 for k in keys if k.status(now) == "expired"),
                "total_usage": sum(k.usage_count for k in keys),
            },
            "request_logs": logs,
            "config_version": manager.version if manager else None,
            "draining": gateway.draining,
        }
    )
