"""Checking the fields of a key sent to `/admin/keys`, before anything is stored.

Each bad field is a 400 `invalid_request_error` naming it (`param`). Limits keep every
value inside what the stores hold (64-bit integers, RFC 3339 times up to year 9999).
"""

from __future__ import annotations

import math
import re
import time
from typing import Any

from ferro_proxy.admin.http import MAX_TIME, parse_time
from ferro_proxy.errors import bad_request
from ferro_proxy.stores.records import SCOPES

MAX_NAME = 200
MAX_MODELS = 1000
MAX_MODEL_NAME = 256
MAX_LIMIT = 10**12  # requests or tokens per minute
MAX_BUDGET_USD = 10**12
POLICY_FIELDS = ("allowed_models", "rpm_limit", "tpm_limit", "budget_usd")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def key_name(value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise bad_request("name: required, a non-empty string", param="name")
    name = value.strip()
    if len(name) > MAX_NAME:
        raise bad_request(f"name: at most {MAX_NAME} characters", param="name")
    if _CONTROL.search(name):
        raise bad_request("name: must not contain control characters", param="name")
    return name


def scopes(value: Any) -> list[str]:
    expected = ", ".join(SCOPES)
    if (
        not isinstance(value, list)
        or not value
        or len(value) > 16
        or not all(isinstance(s, str) for s in value)
    ):
        raise bad_request(f"scopes: expected a non-empty list of {expected}", param="scopes")
    unknown = [s for s in value if s not in SCOPES]
    if unknown:
        shown = ", ".join(repr(s[:40]) for s in unknown[:5])
        raise bad_request(f"scopes: unknown {shown} (expected {expected})", param="scopes")
    return list(dict.fromkeys(value))


def _models(value: Any) -> list[str]:
    if value is None:
        return []
    if (
        not isinstance(value, list)
        or len(value) > MAX_MODELS
        or not all(isinstance(m, str) and 0 < len(m) <= MAX_MODEL_NAME for m in value)
    ):
        raise bad_request(
            f"allowed_models: expected a list of at most {MAX_MODELS} model names or patterns"
            f" (each 1 to {MAX_MODEL_NAME} characters)",
            param="allowed_models",
        )
    return value


def _number(value: Any, name: str, *, integer: bool, high: float) -> int | float | None:
    if value is None:
        return None
    kind = "integer" if integer else "number"
    ok = isinstance(value, int) if integer else isinstance(value, int | float)
    if ok and isinstance(value, float) and not math.isfinite(value):
        ok = False
    if not ok or isinstance(value, bool) or not 0 <= value <= high:
        raise bad_request(f"{name}: expected a {kind} from 0 to {high:.0f}, or null", param=name)
    return value


def policy(body: dict[str, Any]) -> dict[str, Any]:
    """The policy fields present in `body`, checked."""
    out: dict[str, Any] = {}
    if "allowed_models" in body:
        out["allowed_models"] = _models(body["allowed_models"])
    for name in ("rpm_limit", "tpm_limit"):
        if name in body:
            out[name] = _number(body[name], name, integer=True, high=MAX_LIMIT)
    if "budget_usd" in body:
        out["budget_usd"] = _number(body["budget_usd"], "budget_usd", integer=False, high=MAX_BUDGET_USD)
    return out


def expiry(body: dict[str, Any]) -> float | None:
    """When the key expires: `expires_in` seconds from now, else `expires_at`, else never."""
    if body.get("expires_in") is not None:
        seconds = body["expires_in"]
        if (
            not isinstance(seconds, int | float)
            or isinstance(seconds, bool)
            or (isinstance(seconds, float) and not math.isfinite(seconds))
            or not 0 < seconds <= MAX_TIME - time.time()
        ):
            raise bad_request(
                "expires_in: expected seconds > 0 (ending before year 10000)", param="expires_in"
            )
        return time.time() + float(seconds)
    return parse_time(body.get("expires_at"), "expires_at")
