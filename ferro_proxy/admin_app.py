"""The admin listener: metrics, health and readiness (and, from other parts, /admin/*)."""

from __future__ import annotations

from collections.abc import Callable

import orjson
from aiohttp import web

from ferro_proxy.gateway import Gateway
from ferro_proxy.health import health_report
from ferro_proxy.health_access import may_see_detail

ADMIN_GATEWAY = web.AppKey("gateway", Gateway)

# Other parts register route installers: fn(app, gateway) -> None
ADMIN_ROUTES: list[Callable[[web.Application, Gateway], None]] = []
# Readiness checks: fn(gateway) -> reason it is not ready, or None
READINESS_CHECKS: list[Callable[[Gateway], str | None]] = []


async def metrics(request: web.Request) -> web.Response:
    gateway = request.app[ADMIN_GATEWAY]
    return web.Response(body=gateway.metrics.render(), headers={"Content-Type": gateway.metrics.content_type})


async def health(request: web.Request) -> web.Response:
    gateway = request.app[ADMIN_GATEWAY]
    report = health_report(gateway, detailed=await may_see_detail(request, gateway))
    return web.Response(
        body=orjson.dumps(report), content_type="application/json", headers={"Cache-Control": "no-store"}
    )


async def ready(request: web.Request) -> web.Response:
    gateway = request.app[ADMIN_GATEWAY]
    reasons = []
    if gateway.runtime is None:
        reasons.append("starting")
    if gateway.draining:
        reasons.append("draining")
    for check in READINESS_CHECKS:
        reason = check(gateway)
        if reason:
            reasons.append(reason)
    if reasons:
        return web.Response(
            status=503,
            body=orjson.dumps({"status": "not_ready", "reasons": reasons}),
            content_type="application/json",
        )
    return web.Response(body=b'{"status":"ready"}', content_type="application/json")


def create_admin_app(gateway: Gateway) -> web.Application:
    app = web.Application(client_max_size=16 * 1024 * 1024)
    app[ADMIN_GATEWAY] = gateway
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/health", health)
    app.router.add_get("/ready", ready)
    for install in ADMIN_ROUTES:
        install(app, gateway)
    return app
