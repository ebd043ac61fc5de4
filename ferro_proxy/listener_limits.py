"""Slow and greedy clients: time and connection limits on both listeners.

aiohttp bounds an idle kept-alive connection (`keepalive_timeout`) but not how long a client
may take to send a request head or body, nor how many connections it may hold. The runner
here builds the app's server as usual and hands every connection a `GuardedRequestHandler`:

- `header_timeout`: from the connection's start (or a kept-alive request's first byte) to
  the end of the request head; then 408 and the connection is closed.
- `body_timeout`: from the end of the head to the end of the body; the handler's read fails
  with 408 (an OpenAI-shaped answer) and the connection is closed. Responses, streamed or
  not, are never timed by it.
- `idle_timeout`: aiohttp's keep-alive timeout.
- `max_connections`: past it, a new connection is answered 503 at once and closed.

Limits are read from the live config for every new connection, so a reload applies to the
connections that follow it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import BadHttpMessage, ContentEncodingError, HttpProcessingError, LineTooLong
from aiohttp.web_protocol import RequestHandler, RequestPayloadError

from ferro_proxy.config import ListenerConfig
from ferro_proxy.errors import GatewayError
from ferro_proxy.metrics import Metrics
from ferro_proxy.redaction import redact_text

REFUSED_LINGER = 2.0  # seconds a refused connection may still send (discarded) before we close
_REASONS = {408: "Request Timeout", 503: "Service Unavailable"}


def response_bytes(err: GatewayError) -> bytes:
    """A whole HTTP/1.1 error response for a connection that is then closed."""
    body = err.body()
    head = [
        f"HTTP/1.1 {err.status} {_REASONS.get(err.status, 'Error')}",
        "Content-Type: application/json",
        f"Content-Length: {len(body)}",
        "Connection: close",
        *(f"{k}: {v}" for k, v in err.headers.items() if k.lower() != "connection"),
    ]
    return ("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + body


def head_timeout_error() -> GatewayError:
    return GatewayError(
        408, "the request head was not received in time", code="request_timeout", retryable=False
    )


def body_timeout_error() -> GatewayError:
    return GatewayError(
        408,
        "the request body was not received in time",
        code="request_timeout",
        retryable=False,
        headers={"Connection": "close"},
    )


def full_error() -> GatewayError:
    return GatewayError(
        503,
        "too many open connections to the gateway; retry shortly",
        code="too_many_connections",
        type="api_error",
        headers={"Retry-After": "1"},
    )


_bad_log = logging.getLogger("ferro_proxy.http")

BAD_REQUEST_REASONS = ("malformed_http", "content_encoding", "too_large", "other")


def bad_request_reason(status: int, exc: BaseException | None) -> str:
    if isinstance(exc, ContentEncodingError):
        return "content_encoding"
    if status == 413 or isinstance(exc, LineTooLong):
        return "too_large"
    if isinstance(exc, BadHttpMessage):
        return "malformed_http"
    return "other"


class ConnectionGuard:
    """One listener's live limits, its count of open connections and its metrics."""

    def __init__(self, listener: str, limits: Callable[[], ListenerConfig], metrics: Metrics) -> None:
        self.listener = listener
        self.limits = limits
        self.active = 0
        self._open = metrics.gauge(
            "ferro_listener_connections", "Open client connections per listener", ["listener"]
        ).labels(listener)
        closed = metrics.counter(
            "ferro_listener_connections_cut_total",
            "Client connections refused or cut by a listener limit",
            ["listener", "reason"],
        )
        self.cut = {
            reason: closed.labels(listener, reason)
            for reason in ("max_connections", "header_timeout", "body_timeout")
        }
        bad = metrics.counter(
            "ferro_bad_requests_total",
            "Requests refused at the HTTP layer for a client mistake (malformed head, undecodable body)",
            ["listener", "reason"],
        )
        self.bad = {reason: bad.labels(listener, reason) for reason in BAD_REQUEST_REASONS}

    def opened(self) -> None:
        self.active += 1
        self._open.set(self.active)

    def closed(self) -> None:
        self.active -= 1
        self._open.set(self.active)


class GuardedRequestHandler(RequestHandler):
    """aiohttp's handler with the listener's limits, and client mistakes that aiohttp's own
    parser refuses answered in OpenAI's error shape and logged at info, not error."""

    __slots__ = ("_guard", "_limits", "_head_timer", "_body_timer", "_body", "_counted", "_refused")

    def __init__(self, manager: web.Server, *, guard: ConnectionGuard, **kwargs: Any) -> None:
        limits = guard.limits()
        kwargs["keepalive_timeout"] = limits.idle_timeout
        super().__init__(manager, **kwargs)
        self._guard = guard
        self._limits = limits
        self._head_timer: asyncio.TimerHandle | None = None
        self._body_timer: asyncio.TimerHandle | None = None
        self._body: Any = None  # the payload of the latest request head
        self._counted = False
        self._refused: asyncio.TimerHandle | None = None

    def log_exception(self, *args: Any, **kw: Any) -> None:
        exc = kw.get("exc_info")
        if isinstance(exc, RequestPayloadError | BadHttpMessage):  # the client's body or head, not our bug
            _bad_log.info("dropped the rest of an undecodable request body")
            return
        super().log_exception(*args, **kw)

    def handle_error(
        self,
        request: Any,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        if status >= 500:
            if request.writer.output_size > 0:
                raise ConnectionError("the response was already started")
            self.log_exception("unhandled error serving a request", exc_info=exc)
            err = GatewayError(500, "internal gateway error", code="internal_error", type="api_error")
        else:
            reason = bad_request_reason(status, exc)
            self._guard.bad[reason].inc()
            _bad_log.info(
                "refused a malformed request", extra={"fields": {"status": status, "reason": reason}}
            )
            if request.writer.output_size > 0:
                raise ConnectionError("the response was already started")
            if reason == "content_encoding":
                text = "the request's Content-Encoding is not supported (use gzip, deflate or none)"
            else:
                detail = exc.message if isinstance(exc, HttpProcessingError) else message or ""
                text = f"malformed request: {redact_text(str(detail))}"[:300]
            err = GatewayError(status, text, code=f"bad_request_{reason}")
        response = web.Response(status=err.status, body=err.body(), content_type="application/json")
        response.force_close()
        return response

    # ------------------------------------------------------------ connection

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if self._guard.active >= self._limits.max_connections:
            self._refuse(transport)  # type: ignore[arg-type]
            return
        self._guard.opened()
        self._counted = True
        super().connection_made(transport)
        self._arm_head()

    def connection_lost(self, exc: BaseException | None) -> None:
        if self._refused is not None:
            self._refused.cancel()
            return
        self._cancel_head()
        self._cancel_body()
        if self._counted:
            self._counted = False
            self._guard.closed()
        super().connection_lost(exc)

    def _refuse(self, transport: asyncio.Transport) -> None:
        """503 at once; what the client still sends is read and dropped (closing with unread
        data would reset the connection and could lose the answer), then we close."""
        self._force_close = True
        self._guard.cut["max_connections"].inc()
        transport.write(response_bytes(full_error()))
        if transport.can_write_eof():
            transport.write_eof()
        # (the client's EOF closes the transport earlier)
        self._refused = asyncio.get_running_loop().call_later(REFUSED_LINGER, transport.close)

    # ------------------------------------------------------------ data

    def data_received(self, data: bytes) -> None:
        if self._refused is not None or self._force_close or self._close:
            return
        body = self._body
        if (
            data
            and self._head_timer is None
            and (body is None or body.is_eof())
            and not self._upgraded
            and self._payload_parser is None
        ):
            self._arm_head()  # the first byte of a kept-alive request
        count = self._request_count
        super().data_received(data)
        if self._body_timer is not None and body is not None and body.is_eof():
            self._cancel_body()
        if self._request_count != count:
            self._cancel_head()
            if self._messages:
                payload = self._messages[-1][1]
                self._body = payload
                if not payload.is_eof():
                    self._arm_body()

    # ------------------------------------------------------------ timers

    def _arm_head(self) -> None:
        self._head_timer = self._loop.call_later(self._limits.header_timeout, self._head_expired)

    def _cancel_head(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _arm_body(self) -> None:
        self._cancel_body()
        self._body_timer = self._loop.call_later(self._limits.body_timeout, self._body_expired)

    def _cancel_body(self) -> None:
        if self._body_timer is not None:
            self._body_timer.cancel()
            self._body_timer = None

    def _head_expired(self) -> None:
        self._head_timer = None
        body = self._body
        if self._request_in_progress or (body is not None and not body.is_eof()):
            # A pipelined head behind a request still being served: that one is not late.
            self._arm_head()
            return
        self._guard.cut["header_timeout"].inc()
        transport = self.transport
        if transport is not None and not transport.is_closing():
            transport.write(response_bytes(head_timeout_error()))
        self.force_close()

    def _body_expired(self) -> None:
        self._body_timer = None
        payload = self._body
        if payload is None or payload.is_eof():
            return
        self._guard.cut["body_timeout"].inc()
        if not self._request_in_progress:  # the handler answered without reading it all
            self.force_close()
            return
        # The handler's read raises this (rendered 408); no lingering read of the rest, and
        # no further request on this connection.
        payload.set_exception(body_timeout_error())
        self._lingering_time = 0.0
        self.close()


class GuardedServer(web.Server):
    """The app's aiohttp server, making `GuardedRequestHandler`s."""

    def __init__(self, base: web.Server, guard: ConnectionGuard) -> None:
        super().__init__(
            base.request_handler,
            request_factory=base.request_factory,
            handler_cancellation=base.handler_cancellation,
            loop=base._loop,
            **base._kwargs,
        )
        self.guard = guard

    def __call__(self) -> RequestHandler:
        return GuardedRequestHandler(self, loop=self._loop, guard=self.guard, **self._kwargs)


class GuardedRunner(web.AppRunner):
    """`web.AppRunner` whose server applies a `ConnectionGuard` to every connection."""

    def __init__(self, app: web.Application, guard: ConnectionGuard, **kwargs: Any) -> None:
        super().__init__(app, **kwargs)
        self.guard = guard

    async def _make_server(self) -> web.Server:
        return GuardedServer(await super()._make_server(), self.guard)
