"""Intercepted requests inside the proxy app: mapping their paths onto the gateway's routes
and marking them for the chain.

An intercepted connection (a CONNECT whose TLS the gateway terminated, or a transparent
one) runs its RequestHandler in a context where `CONNECTION` names the host; a plain-HTTP
proxy request names it in its absolute URI. `install(server, ...)` wraps the aiohttp
server's request factory (path rewrite, host lookup) and request handler (refusals, the
request-scoped mark, metrics). The `intercept` filter, first in the chain, reads the mark:
ingress, the provider pin, the credentials.
"""

from __future__ import annotations

import contextvars
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from aiohttp import web
from yarl import URL

from ferro_proxy.chain import Filter, Next
from ferro_proxy.config import GatewayConfig
from ferro_proxy.errors import GatewayError
from ferro_proxy.exchange import Exchange, Reply
from ferro_proxy.gateway import CHAIN_HOOKS
from ferro_proxy.intercept.hosts import HostTarget
from ferro_proxy.redaction import add_request_secret
from ferro_proxy.respond import error_response, request_id_of

if TYPE_CHECKING:
    from ferro_proxy.gateway import Gateway
    from ferro_proxy.intercept.listener import Interceptor


@dataclass(frozen=True, slots=True)
class Intercepted:
    """Where an intercepted request was really going."""

    target: HostTarget
    gateway_key: str | None = None  # a sk-ferro key from Proxy-Authorization, if any
    via: str = "connect"  # connect | transparent | http-proxy


# Set for the RequestHandler of an intercepted TLS connection (its tasks inherit it).
CONNECTION: contextvars.ContextVar[Intercepted | None] = contextvars.ContextVar(
    "ferro_intercept_connection", default=None
)
# Set in the task of one intercepted request; the chain filter reads it.
REQUEST: contextvars.ContextVar[Intercepted | None] = contextvars.ContextVar(
    "ferro_intercept_request", default=None
)
# request[_MARK] = Intercepted, or a GatewayError refusing the request
_MARK: web.RequestKey[Intercepted | GatewayError] = web.RequestKey("ferro_intercepted", object)  # type: ignore[arg-type]


def install(server: web.Server, interceptor: Interceptor) -> None:
    """Wrap `server` (the proxy app's aiohttp server) so it understands intercepted requests.
    Requests that are neither intercepted nor absolute-form cost one context lookup."""
    make_request = server.request_factory
    handle = server.request_handler

    def request_factory(message: Any, payload: Any, protocol: Any, writer: Any, task: Any) -> web.BaseRequest:
        mark: Intercepted | GatewayError | None = CONNECTION.get()
        if mark is None and message.path[:1] not in ("/", "*"):  # absolute-form: a plain-HTTP proxy client
            mark = interceptor.http_proxy_target(message.url)
        if mark is None:
            return make_request(message, payload, protocol, writer, task)
        if isinstance(mark, Intercepted):
            url = message.url.relative() if message.url.absolute else message.url
            path = mark.target.gateway_path(url.path)
            if path != url.path:
                url = url.with_path(path)
            message = message._replace(path=str(url), url=URL(str(url)))
        request = make_request(message, payload, protocol, writer, task)
        request[_MARK] = mark
        return request

    async def request_handler(request: web.BaseRequest) -> web.StreamResponse:
        mark = request.get(_MARK)
        if mark is None:
            return await handle(request)
        if isinstance(mark, GatewayError):
            return error_response(mark, request_id_of(request))  # type: ignore[arg-type]
        REQUEST.set(mark)
        response = await handle(request)
        interceptor.count_request(mark, response.status)
        return response

    server.request_factory = request_factory
    server.request_handler = request_handler


class InterceptMark(Filter):
    """First in the chain: marks an intercepted request (ingress, host), pins it to the
    provider that owns the host, and applies the credential policy."""

    name = "intercept"
    type = "transform"
    description = "Marks and pins requests that arrived through interception."

    async def handle(self, ex: Exchange, next: Next) -> Reply:
        mark = REQUEST.get()
        if mark is None:
            return await next(ex)
        target = mark.target
        if ex.ingress == "openai":
            # The Messages ingress keeps "anthropic": its native pass-through depends on it.
            ex.ingress = "intercept"
        ex.metadata["intercepted_host"] = target.host
        if target.provider is not None:
            if target.provider not in self.gateway.providers:
                raise GatewayError(
                    502,
                    f"{target.host} is intercepted for the {target.provider!r} provider, which is not "
                    f"enabled on this gateway (add providers.{target.provider} to the config)",
                    code="provider_not_enabled",
                    type="api_error",
                )
            ex.metadata["pinned_provider"] = target.provider
        if mark.gateway_key and "gateway_key_token" not in ex.metadata:
            ex.metadata["gateway_key_token"] = mark.gateway_key
            add_request_secret(mark.gateway_key)
        if self.gateway.config.intercept.replace_credentials:
            ex.client_api_key = None  # the app's own key never leaves the gateway
        return await next(ex)


def _chain_hook(config: GatewayConfig, gateway: Gateway, filters: list[Filter]) -> list[Filter]:
    # Interception is decided at startup (the listener cannot change on reload).
    if "intercept_ca" not in gateway.services:
        return filters
    return [InterceptMark(None, gateway), *filters]


def register_chain_hook() -> None:
    """Put the `intercept` filter first in every chain built while interception is on.
    Registered last, so it runs before the gateway-auth filter other hooks put first."""
    from ferro_proxy.chain import load_builtin_filters

    load_builtin_filters()  # filter modules register their hooks on import: ours goes after them
    if _chain_hook in CHAIN_HOOKS:
        CHAIN_HOOKS.remove(_chain_hook)
    CHAIN_HOOKS.append(_chain_hook)
