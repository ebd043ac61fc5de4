"""Every admin route with the scope it needs, and the installer for the admin listener.

Read scope (`read_only` or `admin`): the GET routes. Admin scope: everything that changes
state. `/dashboard` (the page and its assets) is public: it holds no data, and signs in
with a key against these routes.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

from aiohttp import web

from ferro_proxy.admin import config_api, keys_api, logs_api, status_api
from ferro_proxy.admin.http import ADMIN, GATEWAY, READ, Handler, admin_errors, requires
from ferro_proxy.gateway import Gateway

# (method, path, handler, scopes)
ROUTES: list[tuple[str, str, Handler, tuple[str, ...]]] = [
    ("GET", "/admin/dashboard", status_api.dashboard_summary, READ),
    ("GET", "/admin/keys", keys_api.list_keys, READ),
    ("POST", "/admin/keys", keys_api.create_key, ADMIN),
    ("GET", "/admin/keys/usage", keys_api.key_usage, READ),
    ("GET", "/admin/keys/{id}", keys_api.get_key, READ),
    ("PUT", "/admin/keys/{id}", keys_api.update_key, ADMIN),
    ("DELETE", "/admin/keys/{id}", keys_api.delete_key, ADMIN),
    ("POST", "/admin/keys/{id}/revoke", keys_api.revoke_key, ADMIN),
    ("POST", "/admin/keys/{id}/rotate", keys_api.rotate_key, ADMIN),
    ("GET", "/admin/providers", status_api.list_providers, READ),
    ("GET", "/admin/health", status_api.admin_health, READ),
    ("GET", "/admin/config", config_api.get_config, READ),
    ("POST", "/admin/config", config_api.replace_config, ADMIN),
    ("PUT", "/admin/config", config_api.patch_config, ADMIN),
    ("DELETE", "/admin/config", config_api.reset_config, ADMIN),
    ("GET", "/admin/config/history", config_api.config_history, READ),
    ("POST", "/admin/config/rollback/{version}", config_api.rollback_config, ADMIN),
    ("GET", "/admin/logs", logs_api.list_logs, READ),
    ("DELETE", "/admin/logs", logs_api.delete_logs, ADMIN),
    ("GET", "/admin/logs/stats", logs_api.logs_stats, READ),
    ("GET", "/admin/audit", logs_api.list_audit, READ),
]

STATIC_DIR = Path(__file__).resolve().parent.parent / "static"
_ASSETS = {
    "dashboard.js": "application/javascript",
    "dashboard.css": "text/css",
}
# The page loads only its own assets and talks only to this listener.
_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self' data:; "
    "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)


@cache
def _static(name: str) -> bytes:
    return (STATIC_DIR / name).read_bytes()


async def dashboard_page(request: web.Request) -> web.Response:
    body = _static("dashboard.html")
    return web.Response(
        body=body,
        content_type="text/html",
        charset="utf-8",
        headers={
            "Content-Security-Policy": _CSP,
            "Cache-Control": "no-cache",
            "X-Content-Type-Options": "nosniff",
        },
    )


async def dashboard_asset(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    content_type = _ASSETS.get(name)
    if content_type is None:
        raise web.HTTPNotFound()
    return web.Response(
        body=_static(name),
        content_type=content_type,
        charset="utf-8",
        headers={"Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff"},
    )


def install(app: web.Application, gateway: Gateway) -> None:
    app[GATEWAY] = gateway
    app.middlewares.append(admin_errors)
    for method, path, handler, scopes in ROUTES:
        app.router.add_route(method, path, requires(scopes, handler))
    app.router.add_get("/dashboard", dashboard_page)
    app.router.add_get("/dashboard/{name}", dashboard_asset)
