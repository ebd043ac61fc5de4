"""The Anthropic Messages ingress: `POST /v1/messages` and `POST /v1/messages/count_tokens`.

A Messages request is parsed once and validated; its OpenAI-shaped view becomes `ex.body`
(so every filter and every provider work unchanged) and the client's own body is kept in
`ex.metadata["anthropic_native"]`. The chain's reply is turned back into a Messages reply
or event stream here, unless the Anthropic provider already answered natively
(`ex.metadata["native_reply"]`). Errors are rendered in Anthropic's error shape.
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator
from typing import Any

import orjson
from aiohttp import web

from ferro_proxy.errors import GatewayError, bad_request
from ferro_proxy.exchange import Exchange, Reply, StreamChunk
from ferro_proxy.proxy_app import GATEWAY_KEY, make_exchange, read_json_body
from ferro_proxy.proxy_path import check_model_name
from ferro_proxy.respond import error_response, request_id_of, serve
from providers.anthropic import NATIVE_KEY, NATIVE_REPLY
from providers.translate_anthropic import (
    OpenAIToNativeStream,
    native_error_payload,
    native_to_openai_body,
    openai_reply_to_native,
)

MESSAGES_PATH = "/v1/messages"
COUNT_TOKENS_PATH = "/v1/messages/count_tokens"
# count_tokens estimate for targets other than Anthropic (see docs/readme/messages_ingress.md)
CHARS_PER_TOKEN = 4
TOKENS_PER_MESSAGE = 4
TOKENS_PER_IMAGE = 1600


def anthropic_errors(err: GatewayError) -> tuple[bytes, bytes]:
    """(JSON body, final SSE event) in Anthropic's error shape; the message is scrubbed."""
    message = err.payload()["error"]["message"]
    payload = orjson.dumps(native_error_payload(err.status, message, err.type))
    return payload, b"event: error\ndata: " + payload + b"\n\n"


def check_native(body: Any, *, needs_max_tokens: bool) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise bad_request("request body must be a JSON object", code="invalid_json")
    if not isinstance(body.get("model"), str) or not body["model"]:
        raise bad_request("model: field required", code="missing_required_parameter", param="model")
    check_model_name(body["model"])
    max_tokens = body.get("max_tokens")
    if needs_max_tokens and (
        not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 1
    ):
        raise bad_request(
            "max_tokens: field required (a positive integer)",
            code="missing_required_parameter",
            param="max_tokens",
        )
    if not isinstance(body.get("messages"), list) or not body["messages"]:
        raise bad_request("messages: field required (a non-empty array)", code="missing_required_parameter")
    if not isinstance(body.get("system"), str | list | None):
        raise bad_request(
            "system: must be a string or an array of text blocks", code="invalid_type", param="system"
        )
    if "stream" in body and not isinstance(body["stream"], bool | None):
        raise bad_request("stream: must be a boolean", code="invalid_type", param="stream")
    return body


async def _exchange(request: web.Request, endpoint: str, needs_max_tokens: bool) -> Exchange:
    gateway = request.app[GATEWAY_KEY]
    raw, parsed = await read_json_body(request, gateway.config.max_request_bytes)
    native = check_native(parsed, needs_max_tokens=needs_max_tokens)
    try:
        view = native_to_openai_body(native)
    except (TypeError, ValueError, AttributeError, KeyError):  # a shape the checks above let through
        raise bad_request(
            "the request body does not follow the Messages API shape", code="invalid_request"
        ) from None
    ex = make_exchange(request, endpoint, view, raw)
    ex.ingress = "anthropic"
    ex.metadata[NATIVE_KEY] = native
    return ex


async def messages_handler(request: web.Request) -> web.StreamResponse:
    try:
        ex = await _exchange(request, "chat", needs_max_tokens=True)
    except GatewayError as err:
        return error_response(err, request_id_of(request), anthropic_errors)
    return await serve(request.app[GATEWAY_KEY], request, ex, anthropic_errors, to_messages_reply)


# ---------------------------------------------------------------- replies


def to_messages_reply(ex: Exchange, reply: Reply) -> None:
    """Reshape an OpenAI chat reply (JSON or chunk stream) as a Messages reply."""
    if ex.metadata.get(NATIVE_REPLY):
        return
    model = str(ex.metadata[NATIVE_KEY].get("model", ""))
    if reply.stream is None:
        data = reply.json()
        if isinstance(data, dict) and "choices" in data:
            reply.set_json(openai_reply_to_native(data, model))
        return
    reply.wrap_stream(lambda chunks: _native_events(chunks, model))


async def _native_events(chunks: AsyncIterator[StreamChunk], model: str) -> AsyncIterator[StreamChunk]:
    translator = OpenAIToNativeStream(model)
    native = False
    try:
        async for chunk in chunks:
            # A stream already in Messages form (e.g. a filter replaying a stored native
            # answer) passes through as it is.
            if native or (not translator.started and chunk.raw.startswith(b"event: message_start")):
                native = True
                yield chunk
                continue
            if chunk.kind == "data":
                events = translator.feed(chunk.json())
            elif chunk.kind == "done":
                events = translator.finish()
                for event in events:
                    yield StreamChunk(event, "event")
                return
            elif chunk.kind == "comment":
                events = [chunk.raw]
            else:
                events = []
            for event in events:
                yield StreamChunk(event, "event")
    finally:
        aclose = getattr(chunks, "aclose", None)
        if aclose is not None:
            await aclose()
    if native:
        return
    # A stream that stops without [DONE] raised inside `chunks`; one that simply ends is done.
    for event in translator.finish():
        yield StreamChunk(event, "event")


# ---------------------------------------------------------------- count_tokens


async def count_tokens_handler(request: web.Request) -> web.StreamResponse:
    """Forwarded to Anthropic when Anthropic would serve the model; estimated otherwise (after
    the gateway-key check)."""
    gateway = request.app[GATEWAY_KEY]
    try:
        ex = await _exchange(request, "count_tokens", needs_max_tokens=False)
    except GatewayError as err:
        return error_response(err, request_id_of(request), anthropic_errors)
    if targets_anthropic(gateway, ex.model):
        return await serve(gateway, request, ex, anthropic_errors)
    try:
        await authorize(gateway, ex)
    except GatewayError as err:
        return error_response(err, ex.request_id, anthropic_errors)
    tokens = estimate_tokens(ex.metadata[NATIVE_KEY])
    return web.Response(
        body=orjson.dumps({"input_tokens": tokens}),
        content_type="application/json",
        headers={"X-Request-ID": ex.request_id, "x-ferro-token-count": "estimate"},
    )


async def authorize(gateway: Any, ex: Exchange) -> None:
    """The local estimate skips the filter chain, but not gateway-key auth."""
    from filters.auth import authorize as check_gateway_key

    await check_gateway_key(gateway, ex)


def targets_anthropic(gateway: Any, model: str) -> bool:
    """Whether a chat for `model` would go to the Anthropic provider."""
    config = gateway.config
    provider = gateway.providers.get("anthropic")
    if provider is None:
        return False
    model = config.aliases.get(model, model)
    prefix, sep, rest = model.partition("/")
    if sep and prefix in gateway.providers:
        return prefix == "anthropic"
    if config.targets and all(t.virtual_key != "anthropic" for t in config.targets):
        return False
    return provider.serves(model)


def estimate_tokens(native: dict[str, Any]) -> int:
    """≈ characters / 4 of every text (system, turns, tool inputs and results, tool
    definitions), plus 4 per turn and 1,600 per image (Anthropic's cost of a full-size image)."""
    chars = 0
    images = 0

    def walk(value: Any) -> None:
        nonlocal chars, images
        if isinstance(value, str):
            chars += len(value)
        elif isinstance(value, list):
            for item in value:
                walk(item)
        elif isinstance(value, dict):
            kind = value.get("type")
            if kind in ("image", "document"):
                images += 1
            elif kind == "tool_use":
                chars += len(str(value.get("name", ""))) + len(orjson.dumps(value.get("input") or {}))
            elif kind in ("thinking", "redacted_thinking"):
                return
            else:
                for key in ("text", "content"):
                    if key in value:
                        walk(value[key])

    walk(native.get("system") or "")
    messages = native.get("messages") or []
    for msg in messages:
        if isinstance(msg, dict):
            walk(msg.get("content"))
    for tool in native.get("tools") or ():
        chars += len(orjson.dumps(tool))
    return math.ceil(chars / CHARS_PER_TOKEN) + TOKENS_PER_MESSAGE * len(messages) + TOKENS_PER_IMAGE * images


def add_routes(app: web.Application) -> None:
    app.router.add_post(MESSAGES_PATH, messages_handler)
    app.router.add_post(COUNT_TOKENS_PATH, count_tokens_handler)
