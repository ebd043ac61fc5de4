"""The proxy listener: the OpenAI-compatible surface (and the hooks other ingresses use)."""

from __future__ import annotations

import logging
from typing import Any

import orjson
from aiohttp import web
from aiohttp.typedefs import Handler
from aiohttp.web_protocol import RequestPayloadError

from ferro_proxy.cors import cors_middleware
from ferro_proxy.errors import GatewayError, bad_request
from ferro_proxy.exchange import Exchange
from ferro_proxy.gateway import Gateway
from ferro_proxy.proxy_path import check_model_name, check_target
from ferro_proxy.respond import error_response, request_id_of, serve

log = logging.getLogger("ferro_proxy.proxy")

GATEWAY_KEY_PREFIX = "sk-ferro-"

# endpoint name -> (path, required body fields)
OPENAI_ROUTES: dict[str, tuple[str, tuple[str, ...]]] = {
    "chat": ("/v1/chat/completions", ("model", "messages")),
    "completions": ("/v1/completions", ("model", "prompt")),
    "embeddings": ("/v1/embeddings", ("model", "input")),
    "images": ("/v1/images/generations", ("prompt",)),
}

GATEWAY_KEY = web.AppKey("gateway", Gateway)


def bearer_token(request: web.Request) -> str | None:
    auth = request.headers.get("Authorization", "")
    if auth[:7].lower() == "bearer ":
        token = auth[7:].strip()
        return token or None
    return request.headers.get("api-key") or request.headers.get("x-api-key") or None


def split_credentials(token: str | None) -> tuple[str | None, str | None]:
    """(gateway key, provider key the client brought). A gateway key is never forwarded."""
    if not token:
        return None, None
    if token.startswith(GATEWAY_KEY_PREFIX):
        return token, None
    return None, token


async def read_capped(request: web.Request, limit: int) -> bytes:
    """The whole request body (a multipart upload arrives in many reads), refused past `limit`."""
    if request.content_length is not None and request.content_length > limit:
        raise GatewayError(413, f"request body is larger than {limit} bytes", code="request_too_large")
    chunks: list[bytes] = []
    size = 0
    try:
        async for data in request.content.iter_any():
            size += len(data)
            if size > limit:
                raise GatewayError(413, f"request body is larger than {limit} bytes", code="request_too_large")
            chunks.append(data)
    except RequestPayloadError:
        raise undecodable_body() from None
    return b"".join(chunks)


def undecodable_body() -> GatewayError:
    return bad_request(
        "request body could not be decoded as its Content-Encoding says", code="invalid_content_encoding"
    )


async def read_json_body(request: web.Request, limit: int) -> tuple[bytes, Any]:
    raw = await read_capped(request, limit)
    if not raw:
        raise bad_request("request body is empty; expected a JSON object", code="invalid_json")
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise bad_request(
            f"request body is not valid JSON: {exc.msg} at position {exc.pos}", code="invalid_json"
        ) from None
    return raw, body


def make_exchange(request: web.Request, endpoint: str, body: dict[str, Any] | None, raw: bytes) -> Exchange:
    gateway_key, client_key = split_credentials(bearer_token(request))
    ex = Exchange(
        request_id=request_id_of(request),
        endpoint=endpoint,
        method=request.method,
        path=request.path,
        headers=request.headers,
        body=body,
        query=request.query_string,
        raw_body=raw,
        client_api_key=client_key,
    )
    if gateway_key:
        ex.metadata["gateway_key_token"] = gateway_key
    return ex


def check_fields(body: Any, required: tuple[str, ...]) -> None:
    if not isinstance(body, dict):
        raise bad_request("request body must be a JSON object", code="invalid_json")
    for name in required:
        value = body.get(name)
        if value is None or value == "" or value == []:
            raise bad_request(
                f"missing required field: {name!r}", code="missing_required_parameter", param=name
            )
    if "model" in body:
        if not isinstance(body["model"], str):
            raise bad_request("'model' must be a string", code="invalid_type", param="model")
        if body["model"]:
            check_model_name(body["model"])
    if "messages" in required and not isinstance(body.get("messages"), list):
        raise bad_request("'messages' must be an array", code="invalid_type", param="messages")
    if "stream" in body and not isinstance(body["stream"], bool | None):
        raise bad_request("'stream' must be a boolean", code="invalid_type", param="stream")


def openai_handler(endpoint: str, required: tuple[str, ...]):
    async def handler(request: web.Request) -> web.StreamResponse:
        gateway = request.app[GATEWAY_KEY]
        try:
            raw, body = await read_json_body(request, gateway.config.max_request_bytes)
            check_fields(body, required)
        except GatewayError as err:
            return error_response(err, request_id_of(request))
        return await serve(gateway, request, make_exchange(request, endpoint, body, raw))

    return handler


async def passthrough_handler(request: web.Request) -> web.StreamResponse:
    """Any other `/v1/*` route goes to the upstream serving the body's model (or the default)."""
    gateway = request.app[GATEWAY_KEY]
    body: dict[str, Any] | None = None
    raw = b""
    try:
        # request.path is already decoded (and `%2e%2e` is `..` there): check what the client sent
        upstream_target = check_target(request.raw_path)
        limit = gateway.config.max_request_bytes
        if request.can_read_body:
            if request.content_type == "application/json":
                raw, parsed = await read_json_body(request, limit)
                body = parsed if isinstance(parsed, dict) else None
            else:
                if request.content_length is not None and request.content_length > limit:
                    raise GatewayError(
                        413, f"request body is larger than {limit} bytes", code="request_too_large"
                    )
                raw = await read_capped(request, limit)
    except GatewayError as err:
        return error_response(err, request_id_of(request))
    ex = make_exchange(request, "passthrough", body, raw)
    ex.native_path = upstream_target
    return await serve(gateway, request, ex)


async def model_list(gateway: Gateway) -> list[dict[str, Any]]:
    """Every model the enabled providers and targets serve, enriched from the model catalog
    (mode, context window, max output, prices, capabilities), plus the configured aliases.
    With `targets:` configured, only what that allowlist routes (the router decides)."""
    data: list[dict[str, Any]] = []
    seen: set[tuple[str, str]] = set()
    catalog = gateway.catalog
    config = gateway.config
    router = gateway.runtime.chain.terminal if gateway.runtime is not None else None
    served = getattr(router, "served_models", None)
    routable = getattr(router, "routable", None)

    def enriched(provider: str, model: dict[str, Any]) -> dict[str, Any]:
        info = catalog.get(provider, model["id"]) if catalog else None
        return {**model, **info.to_json()} if info is not None else model

    declared: dict[str, list[str]] = {}
    for t in config.targets:
        names = [m for m in t.models if not _is_pattern(m)]  # "*" or "llama-*" name no one model
        declared.setdefault(t.virtual_key, []).extend([*names, *([t.model] if t.model else [])])
    for name, provider in gateway.providers.items():
        try:
            models = await provider.list_models()
        except GatewayError:
            models = []
        if served is not None:
            kept = served(name, [m["id"] for m in models])
            if kept is None:  # enabled, but not one of the configured targets
                continue
            models = [m for m in models if m["id"] in set(kept)]
        models += [
            {"id": m, "object": "model", "created": 0, "owned_by": name} for m in declared.get(name, [])
        ]
        for m in models:
            key = (name, m["id"])
            if key in seen:
                continue
            seen.add(key)
            data.append(enriched(name, m))
    for alias, target in config.aliases.items():
        if routable is not None and not routable(target):
            continue
        entry: dict[str, Any] = {
            "id": alias,
            "object": "model",
            "created": 0,
            "owned_by": "ferro-proxy",
            "alias_of": target,
        }
        prefix, _, rest = target.partition("/")
        candidates = [(prefix, rest)] if prefix in gateway.providers else []
        candidates += [(name, target) for name in gateway.providers]
        for provider_name, model_name in candidates:
            info = catalog.get(provider_name, model_name) if catalog else None
            if info is not None:
                entry.update(info.to_json())
                break
        data.append(entry)
    return data


def _is_pattern(name: str) -> bool:
    return any(ch in name for ch in "*?[")


async def _authorized(request: web.Request) -> GatewayError | None:
    """Model listings answer without the chain, but behind the same gateway-key check."""
    from filters.auth import authorize

    try:
        await authorize(request.app[GATEWAY_KEY], make_exchange(request, "models", None, b""))
    except GatewayError as err:
        return err
    return None


async def list_models(request: web.Request) -> web.Response:
    if (err := await _authorized(request)) is not None:
        return error_response(err, request_id_of(request))
    data = await model_list(request.app[GATEWAY_KEY])
    return web.Response(body=orjson.dumps({"object": "list", "data": data}), content_type="application/json")


async def retrieve_model(request: web.Request) -> web.Response:
    """`GET /v1/models/{id}`: an entry of the gateway's list (ids may contain '/'), else the
    upstream's answer."""
    if (err := await _authorized(request)) is not None:
        return error_response(err, request_id_of(request))
    wanted = request.match_info["model"]
    for entry in await model_list(request.app[GATEWAY_KEY]):
        if entry["id"] == wanted or f"{entry.get('owned_by')}/{entry['id']}" == wanted:
            return web.Response(body=orjson.dumps(entry), content_type="application/json")
    return await passthrough_handler(request)  # not ours to know (a fine-tune …): ask the upstream


async def health(request: web.Request) -> web.Response:
    from ferro_proxy.health import health_report
    from ferro_proxy.health_access import may_see_detail

    gateway = request.app[GATEWAY_KEY]
    report = health_report(gateway, detailed=await may_see_detail(request, gateway))
    status = 200 if report["status"] != "unavailable" else 503
    return web.Response(
        status=status,
        body=orjson.dumps(report),
        content_type="application/json",
        headers={"Cache-Control": "no-store"},
    )


def draining_middleware(gateway: Gateway):
    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        if gateway.draining:  # a request on a kept-alive connection after SIGTERM
            err = GatewayError(
                503,
                "the gateway is shutting down; retry on another instance",
                code="draining",
                type="api_error",
                headers={"Connection": "close"},
            )
            return error_response(err, request_id_of(request))
        return await handler(request)

    return middleware


def create_proxy_app(gateway: Gateway) -> web.Application:
    app = web.Application(
        client_max_size=2**40,  # the body limit is checked per request against the live config
        middlewares=[draining_middleware(gateway), cors_middleware(gateway.env.get("CORS_ORIGINS", ""))],
        handler_args={"max_field_size": 65536},
    )
    app[GATEWAY_KEY] = gateway
    for endpoint, (path, required) in OPENAI_ROUTES.items():
        app.router.add_post(path, openai_handler(endpoint, required))
    app.router.add_get("/v1/models", list_models)
    app.router.add_get("/v1/models/{model:.+}", retrieve_model)
    app.router.add_get("/health", health)
    # Other ingresses (Anthropic Messages ...) add their routes here, before the catch-all.
    from ferro_proxy.ingress_anthropic import add_routes as add_anthropic_routes

    add_anthropic_routes(app)
    # [\s\S]: a decoded "%0a" must reach the path check too, not fall out as a bare 404
    app.router.add_route("*", r"/v1/{tail:[\s\S]*}", passthrough_handler)
    return app
