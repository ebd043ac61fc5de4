"""The admin API (`/admin/*`) and the dashboard (`/dashboard`) on the admin listener.

Importing this package registers its routes with `ferro_proxy.admin_app.ADMIN_ROUTES`.
"""

from ferro_proxy.admin_app import ADMIN_ROUTES


def _install(app, gateway) -> None:  # noqa: ANN001  (the ADMIN_ROUTES signature)
    from ferro_proxy.admin.routes import install

    install(app, gateway)


if not any(getattr(fn, "__module__", "") == __name__ for fn in ADMIN_ROUTES):
    ADMIN_ROUTES.append(_install)
