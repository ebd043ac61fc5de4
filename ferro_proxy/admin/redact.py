"""Hiding secrets in a config document before the admin API shows it, and putting them back
when a client sends a document it got from the API (with `[REDACTED]` placeholders)."""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from ferro_proxy.jsonlog import scrub

REDACTED = "[REDACTED]"
_SECRET_NAMES = re.compile(
    r"(?i)^(api[_-]?key|x-api-key|apikey|authorization|proxy-authorization|cookie|password|passwd|"
    r"secret|token|access_token|refresh_token|session_token|secret_access_key|access_key_id|"
    r"service_account_json|client_secret|private_key|ca_key|dsn|.*_(api_key|secret|password|token|dsn))$"
)


def _redact_url_password(value: str) -> str:
    if "://" not in value or "@" not in value:
        return value
    try:
        parts = urlsplit(value)
        if not parts.password:
            return value
    except ValueError:
        return value
    host = parts.hostname or ""
    if parts.port:
        host += f":{parts.port}"
    return urlunsplit(parts._replace(netloc=f"{parts.username}:{REDACTED}@{host}"))


def redact(value: Any, key: str = "") -> Any:
    """A copy of `value` with secret-looking fields and strings replaced by `[REDACTED]`."""
    if isinstance(value, dict):
        return {k: redact(v, str(k)) for k, v in value.items()}
    if isinstance(value, list):
        return [redact(v, key) for v in value]
    if isinstance(value, str):
        if key and _SECRET_NAMES.match(key) and value:
            if key.lower().endswith("dsn"):
                redacted = _redact_url_password(value)
                return redacted if redacted != value else (value if "://" in value else REDACTED)
            return REDACTED
        return scrub(_redact_url_password(value))
    return value


def restore_redacted(new: Any, current: Any, path: str = "") -> Any:
    """`new` with every `[REDACTED]` replaced by the value at the same place in `current`.

    Raises ValueError naming the path when there is nothing to restore it from."""
    if isinstance(new, dict):
        cur = current if isinstance(current, dict) else {}
        return {k: restore_redacted(v, cur.get(k), f"{path}.{k}" if path else str(k)) for k, v in new.items()}
    if isinstance(new, list):
        cur_list = current if isinstance(current, list) else []
        return [
            restore_redacted(v, cur_list[i] if i < len(cur_list) else None, f"{path}[{i}]")
            for i, v in enumerate(new)
        ]
    if isinstance(new, str) and REDACTED in new:
        if isinstance(current, str) and redact(current, path.rsplit(".", 1)[-1]) == new:
            return current
        raise ValueError(f"{path}: is {REDACTED!r} but the current config has no value to keep there")
    return new
