"""Plumbing shared by the admin handlers: scope checks, JSON in and out, query parsing,
and OpenAI-shaped errors for everything under /admin (including 404 and 405)."""

from __future__ import annotations

import logging
import math
import re
import time
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any

import orjson
import yaml
from aiohttp import web
from aiohttp.web_protocol import RequestPayloadError

from ferro_proxy.admin.credentials import Principal, validator_for
from ferro_proxy.errors import GatewayError, bad_request
from ferro_proxy.gateway import Gateway
from ferro_proxy.stores.records import MAX_TIME

log = logging.getLogger("ferro_proxy.admin")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
GATEWAY = web.AppKey("admin_gateway", Gateway)
# aiohttp >= 3.12 has typed request keys; older releases take a string.
PRINCIPAL: Any = (
    web.RequestKey("ferro_principal", Principal) if hasattr(web, "RequestKey") else "ferro_principal"
)
READ = ("read_only", "admin")
ADMIN = ("admin",)


def json_response(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(
        status=status,
        body=orjson.dumps(data, default=str),
        content_type="application/json",
        headers={"Cache-Control": "no-store", **(headers or {})},
    )


def error_response(err: GatewayError) -> web.Response:
    return json_response(err.payload(), status=err.status, headers=err.headers)


def bearer(request: web.Request) -> str | None:
    auth = request.headers.get("Authorization", "")
    if auth[:7].lower() == "bearer ":
        return auth[7:].strip() or None
    return request.headers.get("x-api-key") or None


def requires(scopes: tuple[str, ...], handler: Handler) -> Handler:
    async def guarded(request: web.Request) -> web.StreamResponse:
        token = bearer(request)
        if not token:
            raise GatewayError(
                401,
                "an admin API key is required: send Authorization: Bearer <key>",
                code="missing_api_key",
                type="authentication_error",
            )
        principal = await validator_for(request.app[GATEWAY]).check(token)
        if not principal.has_any(*scopes):
            raise GatewayError(
                403,
                f"this key lacks the scope for {request.method} {request.path} (needs {' or '.join(scopes)})",
                code="insufficient_scope",
                type="permission_error",
            )
        request[PRINCIPAL] = principal
        return await handler(request)

    return guarded


def principal(request: web.Request) -> Principal:
    return request[PRINCIPAL]


@web.middleware
async def admin_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """OpenAI-shaped errors for /admin/* (never a traceback)."""
    if not request.path.startswith("/admin"):
        return await handler(request)
    try:
        return await handler(request)
    except GatewayError as err:
        return error_response(err)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        code = {404: "not_found", 405: "method_not_allowed", 413: "request_too_large"}.get(
            exc.status, "http_error"
        )
        message = {
            404: f"no admin route {request.path}",
            405: f"{request.method} is not allowed on {request.path}",
        }
        return error_response(GatewayError(exc.status, message.get(exc.status, exc.reason), code=code))
    except Exception:
        log.exception("admin handler failed on %s %s", request.method, request.path)
        return error_response(GatewayError(500, "internal admin API error", code="internal_error"))


async def read_document(request: web.Request) -> Any:
    """A JSON (or YAML, by Content-Type) request body."""
    try:
        raw = await request.read()
    except RequestPayloadError:
        raise bad_request(
            "request body could not be decoded as its Content-Encoding says", code="invalid_content_encoding"
        ) from None
    if not raw.strip():
        raise bad_request("request body is empty", code="invalid_json")
    try:
        if "yaml" in (request.content_type or ""):
            return yaml.safe_load(raw)
        return orjson.loads(raw)
    except (orjson.JSONDecodeError, yaml.YAMLError) as exc:
        raise bad_request(f"request body is not valid JSON/YAML: {exc}", code="invalid_json") from None


async def read_object(request: web.Request) -> dict[str, Any]:
    body = await read_document(request)
    if not isinstance(body, dict):
        raise bad_request("request body must be a JSON object", code="invalid_json")
    return body


MAX_QUERY_INT = 1_000_000_000  # above the rows any store holds; keeps SQL integers in range


def int_param(request: web.Request, name: str, default: int, low: int = 0, high: int | None = None) -> int:
    """An integer query parameter: 400 naming it unless it is in [low, MAX_QUERY_INT]; clamped to `high`."""
    raw = request.query.get(name)
    if raw is None or raw == "":
        return default
    text = raw.strip()
    if not re.fullmatch(r"[+-]?[0-9]{1,100}", text):
        raise bad_request(f"invalid {name}: must be an integer", param=name)
    value = int(text)
    if value < low:
        raise bad_request(f"invalid {name}: must be >= {low}", param=name)
    if high is not None:
        return min(value, high)
    if value > MAX_QUERY_INT:
        raise bad_request(f"invalid {name}: must be <= {MAX_QUERY_INT}", param=name)
    return value


_RELATIVE = re.compile(r"^([0-9]{1,12}(?:\.[0-9]{1,9})?)(s|m|h|d)$")
_NUMBER = re.compile(r"[+-]?[0-9]{1,15}(?:\.[0-9]{1,9})?")
_UNIT = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def _time_in_range(value: float, name: str) -> float:
    if (isinstance(value, float) and not math.isfinite(value)) or value < 0:
        raise bad_request(f"invalid {name}: must be a time from 1970 on", param=name)
    if value > MAX_TIME:
        raise bad_request(
            f"invalid {name}: beyond year 9999 (give epoch seconds, not milliseconds, or RFC 3339)",
            param=name,
        )
    return float(value)


def parse_time(value: Any, name: str) -> float | None:
    """RFC 3339, epoch seconds, or a relative age like `15m`, `24h` (meaning that long ago).

    Anything else, and any time before 1970 or after year 9999, is a 400 naming `name`."""
    if value is None or value == "":
        return None
    if isinstance(value, int | float) and not isinstance(value, bool):
        return _time_in_range(value, name)
    if isinstance(value, datetime) and value.tzinfo is not None:  # a YAML body's timestamp
        return _time_in_range(value.timestamp(), name)
    if not isinstance(value, str):
        raise bad_request(f"invalid {name}: expected a time (RFC 3339 or epoch seconds)", param=name)
    text = value.strip()
    m = _RELATIVE.match(text)
    if m:
        return _time_in_range(time.time() - float(m.group(1)) * _UNIT[m.group(2)], name)
    if _NUMBER.fullmatch(text):
        return _time_in_range(float(text), name)
    try:
        parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise bad_request(
            f"invalid {name}: use RFC 3339 (2025-01-31T12:00:00Z), epoch seconds or an age like 15m",
            param=name,
        ) from None
    if parsed.tzinfo is None:
        raise bad_request(f"invalid {name}: the time needs a timezone (e.g. Z)", param=name)
    try:
        return _time_in_range(parsed.timestamp(), name)
    except (OverflowError, ValueError):  # a date near year 1 or 9999 shifted out by its offset
        raise bad_request(f"invalid {name}: must be a time from 1970 to year 9999", param=name) from None


def not_found(what: str) -> GatewayError:
    return GatewayError(404, f"{what} not found", code="not_found")


async def audit(request: web.Request, action: str, target: str, detail: dict[str, Any] | None = None) -> None:
    """Record who changed what; a failing audit store is logged, never fatal."""
    store = request.app[GATEWAY].services.get("audit")
    if store is None:
        return
    try:
        await store.add(principal(request).actor, action, target, detail or {})
    except Exception as exc:
        log.error("could not write the audit log: %s", type(exc).__name__)
