"""Serving one Exchange: run the chain on the current runtime, write the Reply to the
client (whole or streamed), then account for it (finalizers, metrics, the access line).

Every ingress (the OpenAI surface, Anthropic Messages, interception) ends here, passing
its own error renderer so a client always gets errors in the shape it speaks.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import Callable
from typing import TYPE_CHECKING

from aiohttp import web

from ferro_proxy.cors import CORS_HEADERS
from ferro_proxy.errors import GatewayError
from ferro_proxy.exchange import Exchange, Reply
from ferro_proxy.jsonlog import log_fields
from ferro_proxy.keepalive import keepalive_line, with_keepalives
from ferro_proxy.metric_labels import model_label, provider_label
from ferro_proxy.redaction import redact_known, redact_text, request_secrets

if TYPE_CHECKING:
    from ferro_proxy.gateway import Gateway

access_log = logging.getLogger("ferro_proxy.access")
log = logging.getLogger("ferro_proxy.proxy")

ErrorRenderer = Callable[[GatewayError], tuple[bytes, bytes]]  # -> (JSON body, final SSE event)
# Turns the chain's reply into the ingress's own shape (e.g. Anthropic Messages) before it is written.
ReplyTransform = Callable[[Exchange, Reply], None]


def openai_errors(err: GatewayError) -> tuple[bytes, bytes]:
    return err.body(), err.sse_event()


def request_id_of(request: web.Request) -> str:
    given = request.headers.get("X-Request-ID", "")
    if 0 < len(given) <= 128 and given.isprintable() and " " not in given:
        return given
    return secrets.token_hex(12)


def error_response(err: GatewayError, request_id: str, render: ErrorRenderer = openai_errors) -> web.Response:
    body, _ = render(err)
    headers = {**err.headers, "X-Request-ID": request_id}
    return web.Response(status=err.status, body=body, content_type="application/json", headers=headers)


def _overhead_ms(ex: Exchange) -> str:
    return f"{max(0.0, ex.elapsed() - ex.upstream_seconds) * 1000:.3f}"


async def serve(
    gateway: Gateway,
    request: web.Request,
    ex: Exchange,
    render: ErrorRenderer = openai_errors,
    transform: ReplyTransform | None = None,
) -> web.StreamResponse:
    """Run `ex` through the chain and write the answer. Never raises to aiohttp.

    `transform(ex, reply)`, if given, reshapes the reply in place before it is written.
    While it runs, the client's own provider key and its gateway key are masked in every
    text the gateway writes (answers, errors, logs, request-log rows)."""
    with request_secrets(ex.client_api_key, ex.metadata.get("gateway_key_token")):
        return await _serve(gateway, request, ex, render, transform)


async def _serve(
    gateway: Gateway,
    request: web.Request,
    ex: Exchange,
    render: ErrorRenderer,
    transform: ReplyTransform | None,
) -> web.StreamResponse:
    runtime = gateway.runtime
    assert runtime is not None
    runtime.enter()
    metrics = gateway.metrics
    metrics.in_flight.inc()
    gateway.in_flight += 1
    task = asyncio.current_task()
    if task is not None:
        gateway.handler_tasks.add(task)
    error: GatewayError | None = None
    reply: Reply | None = None
    status = 500
    response: web.StreamResponse | None = None
    try:
        try:
            reply = await runtime.chain(ex)
            if transform is not None:
                transform(ex, reply)
        except GatewayError as err:
            error = err
        except asyncio.CancelledError:
            if not _ended_by_shutdown(gateway):
                error = GatewayError(499, "client closed the request", code="client_closed", retryable=False)
                raise
            error = shutting_down_error()
        except Exception:
            log.exception(
                "unexpected failure serving %s", ex.path, extra={"fields": {"request_id": ex.request_id}}
            )
            error = GatewayError(500, "internal gateway error", code="internal_error", type="api_error")
        if error is not None:
            status = error.status
            response = error_response(error, ex.request_id, render)
            response.headers["x-ferro-overhead-ms"] = _overhead_ms(ex)
            return response
        assert reply is not None
        status = reply.status
        # Upstream headers (pass-through) may echo the credentials they were sent.
        upstream_headers = {k: redact_text(v) for k, v in reply.headers.items()}
        headers = {**upstream_headers, **ex.response_headers, "X-Request-ID": ex.request_id}
        if reply.stream is None:
            headers["x-ferro-overhead-ms"] = _overhead_ms(ex)
            headers.update(request.get(CORS_HEADERS) or {})
            response = web.Response(
                status=reply.status, body=redact_known(reply.body_bytes()), content_type=None, headers=headers
            )
            response.headers["Content-Type"] = reply.content_type
            # Written here, not by aiohttp after we return, so finalizers run once the
            # client has the whole answer (as for streams).
            try:
                await response.prepare(request)
                await response.write_eof()
            except (ConnectionResetError, RuntimeError):
                error = GatewayError(499, "client went away", code="client_closed", retryable=False)
                status = 499
            return response
        response, error = await _stream(
            request, ex, reply, headers, render, runtime.config.sse_keepalive, lambda: _ended_by_shutdown(gateway)
        )
        if error is not None:
            status = error.status if error.status != 499 else 499
        return response
    finally:
        metrics.in_flight.dec()
        gateway.in_flight -= 1
        gateway.handler_tasks.discard(task)
        runtime.leave()
        await _finish(gateway, ex, reply, error, status)


async def _stream(
    request: web.Request,
    ex: Exchange,
    reply: Reply,
    headers: dict[str, str],
    render: ErrorRenderer,
    keepalive_every: float = 0.0,
    ended_by_shutdown: Callable[[], bool] = lambda: False,
) -> tuple[web.StreamResponse, GatewayError | None]:
    assert reply.stream is not None
    headers["x-ferro-overhead-ms"] = _overhead_ms(ex)
    headers.update(request.get(CORS_HEADERS) or {})
    response = web.StreamResponse(status=reply.status, headers=headers)
    response.content_type = reply.content_type
    if reply.content_type == "text/event-stream":
        response.headers["Cache-Control"] = "no-cache"
        response.headers["X-Accel-Buffering"] = "no"
    stream = reply.stream
    error: GatewayError | None = None
    try:
        await _prepare_coalesced(request, response)
        async for chunk in with_keepalives(stream, response.write, keepalive_line(ex, reply), keepalive_every):
            # By value only: a key the gateway holds in model output was echoed by the upstream.
            await response.write(redact_known(chunk.raw))
    except GatewayError as err:
        error = err
        _, event = render(err)
        try:
            await response.write(event)
        except (ConnectionResetError, RuntimeError):
            pass
    except asyncio.CancelledError:
        await _close(stream)
        if not ended_by_shutdown():
            raise
        error = shutting_down_error()
        _, event = render(error)
        try:
            await response.write(event)
        except (ConnectionResetError, RuntimeError):
            pass
    except ConnectionResetError:
        await _close(stream)
        return response, GatewayError(499, "client went away mid-stream", code="client_closed", retryable=False)
    except Exception:
        log.exception("stream failed", extra={"fields": {"request_id": ex.request_id}})
        error = GatewayError(500, "internal gateway error", code="internal_error", type="api_error")
        _, event = render(error)
        try:
            await response.write(event)
        except (ConnectionResetError, RuntimeError):
            pass
    finally:
        await _close(stream)
    try:
        await response.write_eof()
    except (ConnectionResetError, RuntimeError):
        pass
    return response, error


def shutting_down_error() -> GatewayError:
    return GatewayError(
        503, "the gateway is shutting down; retry the request", code="gateway_shutting_down", type="api_error"
    )


def _ended_by_shutdown(gateway: Gateway) -> bool:
    """True when the drain deadline cancelled this handler: the cancel is taken back so the
    client still gets an answer (an error event for a stream) and the request is accounted."""
    task = asyncio.current_task()
    if not gateway.shutting_down or task is None:
        return False
    task.uncancel()
    return True


async def _prepare_coalesced(request: web.Request, response: web.StreamResponse) -> None:
    """Start the response so that its headers ride on the first chunk when that chunk is
    already at hand (the router pulls it before answering), saving a write per stream, and
    go out on their own the moment the stream would wait for the upstream otherwise."""
    response._send_headers_immediately = False  # aiohttp's own switch (web.Response sets it)
    writer = await response.prepare(request)
    send_headers = getattr(writer, "send_headers", None)
    if send_headers is None:
        return
    asyncio.get_running_loop().call_soon(_send_headers_now, send_headers)


def _send_headers_now(send_headers: Callable[[], None]) -> None:
    try:
        send_headers()  # a no-op once the first chunk carried them
    except (ConnectionResetError, RuntimeError):
        pass  # the client went away; the stream's next write reports it


async def _close(stream: object) -> None:
    aclose = getattr(stream, "aclose", None)
    if aclose is not None:
        try:
            await aclose()
        except Exception:
            pass


async def _finish(
    gateway: Gateway, ex: Exchange, reply: Reply | None, error: GatewayError | None, status: int
) -> None:
    if reply is not None:
        for fn in reply.finalizers:
            try:
                result = fn(ex, reply, error)
                if asyncio.iscoroutine(result):
                    await result
            except Exception:
                log.exception("finalizer failed", extra={"fields": {"request_id": ex.request_id}})
    model = ex.resolved_model or ex.model or "none"
    provider = provider_label(gateway, ex.provider)
    model_l = model_label(gateway, provider, model)
    metrics = gateway.metrics
    duration = ex.elapsed()
    child = metrics.child
    child(metrics.requests, ex.endpoint, provider, model_l, str(status)).inc()
    child(metrics.request_duration, ex.endpoint, provider).observe(duration)
    usage = ex.usage
    if usage.prompt_tokens:
        child(metrics.tokens, provider, model_l, "input").inc(usage.prompt_tokens)
    if usage.completion_tokens:
        child(metrics.tokens, provider, model_l, "output").inc(usage.completion_tokens)
    if ex.ttft_seconds is not None and ex.stream:
        child(metrics.ttft, provider, model_l).observe(ex.ttft_seconds)
    fields = {
        "request_id": ex.request_id,
        "method": ex.method,
        "path": ex.path,
        "endpoint": ex.endpoint,
        "ingress": ex.ingress,
        "status": status,
        "provider": ex.provider,
        "model": model if model != "none" else None,
        "stream": ex.stream,
        "duration_ms": round(duration * 1000, 3),
        "overhead_ms": round(max(0.0, duration - ex.upstream_seconds) * 1000, 3),
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
    }
    if ex.cost_usd is not None:
        fields["cost_usd"] = round(ex.cost_usd, 8)
    if error is not None:
        fields["error"] = error.code
    if len(ex.attempts) > 1:
        fields["attempts"] = [f"{a.provider}:{a.status}" for a in ex.attempts]
    meta = ex.metadata
    if "ab_label" in meta:
        fields["variant"] = meta["ab_label"]
    if "cache" in meta:
        fields["cache"] = meta["cache"]
    if meta.get("mcp_calls"):
        fields["mcp_calls"] = len(meta["mcp_calls"])
    if meta.get("guardrail_hits"):
        fields["guardrail_hits"] = len(meta["guardrail_hits"])
    log_fields(access_log, logging.INFO, "request", **fields)
