"""The admin API (`/admin/*`) and the dashboard (`/dashboard`) on the admin listener.

Importing this package registers its routes with `ferro_proxy.admin_app.ADMIN_ROUTES`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ferro_proxy.admin_app import ADMIN_ROUTES

if TYPE_CHECKING:
    from aiohttp import web

    from ferro_proxy.gateway import Gateway


def install_admin_routes(app: web.Application, gateway: Gateway) -> None:
    from ferro_proxy.admin.routes import install

    install(app, gateway)


if install_admin_routes not in ADMIN_ROUTES:
    ADMIN_ROUTES.append(install_admin_routes)
