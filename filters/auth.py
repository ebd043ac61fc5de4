"""Gateway-key authentication for `/v1`: the first filter of the chain.

Put first by a chain hook whenever the gateway has a key store or `auth.required: true`.
A request then needs a gateway key (`Authorization: Bearer sk-ferro-…`) when
`auth.required` is set or the store holds any active key with the `proxy` scope; a key
that is presented is always checked. The key's `allowed_models` (glob patterns, matched
against the model after aliases) are enforced here; its rpm/tpm/budget are read by the
rate-limit and budget filters from `ex.gateway_key`. The upstream always gets the
configured provider key, never the gateway key.
"""

from __future__ import annotations

from fnmatch import fnmatchcase
from typing import TYPE_CHECKING

from ferro_proxy.admin.credentials import validator_for
from ferro_proxy.chain import Filter, Next, register_filter
from ferro_proxy.errors import GatewayError
from ferro_proxy.exchange import Exchange, Reply
from ferro_proxy.gateway import CHAIN_HOOKS

if TYPE_CHECKING:
    from ferro_proxy.config import GatewayConfig
    from ferro_proxy.gateway import Gateway

PROXY_SCOPES = ("proxy", "admin")


def model_allowed(patterns: list[str], model: str) -> bool:
    bare = model.partition("/")[2] if "/" in model else model
    return any(fnmatchcase(model, p) or fnmatchcase(bare, p) for p in patterns)


@register_filter
class GatewayAuth(Filter):
    name = "gateway-auth"
    type = "auth"
    description = "Requires a gateway key (sk-ferro-…) on /v1; enforces the key's allowed models."

    async def handle(self, ex: Exchange, next: Next) -> Reply:
        gateway = self.gateway
        validator = validator_for(gateway)
        token = ex.metadata.get("gateway_key_token")
        if not token:
            if gateway.config.auth.required or await validator.proxy_keys_exist():
                raise GatewayError(
                    401,
                    "a gateway key is required: send your sk-ferro key as the Bearer token",
                    code="missing_api_key",
                    type="authentication_error",
                )
            return await next(ex)
        principal = await validator.check(token, allow_bootstrap=False)
        if not principal.has_any(*PROXY_SCOPES):
            raise GatewayError(
                403,
                "this gateway key has no 'proxy' scope",
                code="insufficient_scope",
                type="permission_error",
            )
        record = principal.record
        ex.gateway_key = record
        if record is not None and record.allowed_models and ex.model:
            resolved = gateway.config.aliases.get(ex.model, ex.model)
            if not model_allowed(record.allowed_models, resolved):
                raise GatewayError(
                    403,
                    f"this gateway key may not use the model {ex.model!r}",
                    code="model_not_allowed",
                    type="permission_error",
                    param="model",
                )
        return await next(ex)


async def authorize(gateway: Gateway, ex: Exchange) -> None:
    """Gateway-key auth for answers the gateway gives itself, outside the filter chain
    (model lists, local token estimates): raises the same errors the chain's auth would."""

    async def admitted(_: Exchange) -> Reply:
        return Reply(200, data={})

    for f in gateway.runtime.chain.filters:
        if isinstance(f, GatewayAuth):
            await f.handle(ex, admitted)


def put_auth_first(config: GatewayConfig, gateway: Gateway, filters: list[Filter]) -> list[Filter]:
    listed = [f for f in filters if isinstance(f, GatewayAuth)]
    rest = [f for f in filters if not isinstance(f, GatewayAuth)]
    if listed:
        return [listed[0], *rest]
    if config.auth.required or gateway.services.get("keys") is not None:
        return [GatewayAuth(None, gateway), *rest]
    return filters


if put_auth_first not in CHAIN_HOOKS:
    CHAIN_HOOKS.append(put_auth_first)
