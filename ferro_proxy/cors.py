"""CORS for the proxy listener.

Unset `CORS_ORIGINS` means no cross-origin access at all: a gateway on localhost that holds
provider keys must not be callable from whatever web page the user has open. (Ferro's
default is a wildcard; this is a deliberate departure.) Preflights are answered here,
before any auth.
"""

from __future__ import annotations

import logging

from aiohttp import web
from aiohttp.typedefs import Handler

from ferro_proxy.errors import GatewayError

log = logging.getLogger("ferro_proxy.cors")

# Headers a streamed response adds before it starts (streams send headers inside the handler).
CORS_HEADERS = web.RequestKey("ferro_cors_headers", dict)

ALLOW_HEADERS = "Authorization, Content-Type, X-Request-ID, api-key, x-api-key, anthropic-version, anthropic-beta, OpenAI-Organization, OpenAI-Project, Cache-Control, x-ferro-cache-ttl"
EXPOSE_HEADERS = "X-Request-ID, x-ferro-overhead-ms, x-ferro-cost-usd, x-ferro-cache, Retry-After, x-ratelimit-limit-requests, x-ratelimit-remaining-requests, x-ratelimit-reset-requests"


def parse_origins(value: str) -> tuple[frozenset[str], bool]:
    origins = frozenset(o.strip().rstrip("/") for o in value.split(",") if o.strip())
    wildcard = "*" in origins
    if wildcard:
        log.warning("CORS_ORIGINS contains '*': any web page can call this gateway with its provider keys")
    return origins, wildcard


def cors_middleware(value: str):
    origins, wildcard = parse_origins(value)

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        origin = request.headers.get("Origin")
        allowed = bool(origin) and (wildcard or origin in origins)
        if request.method == "OPTIONS" and origin and request.headers.get("Access-Control-Request-Method"):
            if not allowed:
                return web.Response(status=403, text="origin not allowed")
            return web.Response(
                status=204,
                headers={
                    "Access-Control-Allow-Origin": "*" if wildcard else origin,
                    "Access-Control-Allow-Methods": "GET, POST, PUT, DELETE, OPTIONS",
                    "Access-Control-Allow-Headers": request.headers.get(
                        "Access-Control-Request-Headers", ALLOW_HEADERS
                    ),
                    "Access-Control-Max-Age": "600",
                    "Vary": "Origin",
                },
            )
        if origin and not allowed:
            # Browsers send Origin on every cross-origin call; refuse before anything is spent.
            err = GatewayError(
                403, "cross-origin requests are not allowed (set CORS_ORIGINS)", code="cors_forbidden"
            )
            return web.Response(status=403, body=err.body(), content_type="application/json")
        if allowed:
            request[CORS_HEADERS] = {
                "Access-Control-Allow-Origin": "*" if wildcard else origin,
                "Access-Control-Expose-Headers": EXPOSE_HEADERS,
                "Vary": "Origin",
            }
        response = await handler(request)
        if allowed and not response.prepared:
            response.headers.update(request[CORS_HEADERS])
        return response

    return middleware
