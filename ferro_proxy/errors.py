"""The one error type every layer raises, and its OpenAI-shaped rendering.

Anything a client can see goes through `GatewayError`: filters raise it to refuse a
request, providers raise it for upstream failures, the listener renders it as
`{"error": {"message", "type", "code"}}` (or an SSE error event mid-stream).
"""

from __future__ import annotations

from typing import Any

import orjson

from ferro_proxy.redaction import redact_text

_TYPE_BY_STATUS = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "insufficient_quota",
    403: "permission_error",
    404: "invalid_request_error",
    408: "timeout_error",
    409: "invalid_request_error",
    413: "invalid_request_error",
    415: "invalid_request_error",
    422: "invalid_request_error",
    429: "rate_limit_error",
}


class GatewayError(Exception):
    """An error with a status, an OpenAI error type and code, safe to show a client."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        code: str | None = None,
        type: str | None = None,
        param: str | None = None,
        headers: dict[str, str] | None = None,
        retryable: bool | None = None,
        retry_after: float | None = None,
        provider: str | None = None,
        upstream_status: int | None = None,
    ) -> None:
        # Masked once, here: upstream messages echo credentials ("Incorrect API key provided:
        # …"), and the message goes on to client bodies, stream events, logs and request rows.
        message = redact_text(message)
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = redact_text(code) if isinstance(code, str) else code  # may be the upstream's own
        self.type = type or _TYPE_BY_STATUS.get(
            status, "api_error" if status >= 500 else "invalid_request_error"
        )
        self.param = param
        self.headers = dict(headers or {})
        self.retry_after = retry_after
        if retry_after is not None and "Retry-After" not in self.headers:
            self.headers["Retry-After"] = str(max(0, int(retry_after + 0.999)))
        # Retryable by default: transport failures, 408, 429, 5xx.
        self.retryable = retryable if retryable is not None else (status in (408, 429) or status >= 500)
        self.provider = provider
        self.upstream_status = upstream_status  # the status the upstream itself answered, if any

    def payload(self) -> dict[str, Any]:
        # Again at rendering: secrets of the request being answered, registered after the error was made.
        code = redact_text(self.code) if isinstance(self.code, str) else self.code
        err: dict[str, Any] = {"message": redact_text(self.message), "type": self.type, "code": code}
        if self.param is not None:
            err["param"] = self.param
        return {"error": err}

    def body(self) -> bytes:
        return orjson.dumps(self.payload())

    def sse_event(self) -> bytes:
        """The final event of a stream that failed after it started."""
        return b"event: error\ndata: " + self.body() + b"\n\n"

    def __repr__(self) -> str:
        return f"GatewayError({self.status}, {self.code!r}, {self.message!r})"


def bad_request(message: str, *, code: str = "invalid_request", param: str | None = None) -> GatewayError:
    return GatewayError(400, message, code=code, param=param)
