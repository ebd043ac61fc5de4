"""Who may read the detailed `/health`: a caller presenting a read_only or admin gateway key,
checked exactly as the admin routes check it. Anyone else (probes, a proxy client's key, a
wrong key) gets the public report, never an error: a health probe must not fail on a header."""

from __future__ import annotations

import logging

from aiohttp import web

from ferro_proxy.gateway import Gateway

log = logging.getLogger("ferro_proxy.health")

DETAIL_SCOPES = ("read_only", "admin")


async def may_see_detail(request: web.Request, gateway: Gateway) -> bool:
    # Imported here: the admin package imports the admin listener, which imports this module.
    from ferro_proxy.admin.credentials import validator_for
    from ferro_proxy.admin.http import bearer

    token = bearer(request)
    if not token:
        return False
    try:
        principal = await validator_for(gateway).check(token)
    except Exception as exc:  # an invalid key (401) or a key store that is down
        log.debug("health: key not accepted for detail (%s)", type(exc).__name__)
        return False
    return principal.has_any(*DETAIL_SCOPES)
