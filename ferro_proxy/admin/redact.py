"""Hiding secrets in a config document before the admin API shows it, and putting them back
when a client sends a document it got from the API (with `[REDACTED]` placeholders).

Hidden: fields named like a secret (`api_key`, `*_token`, `dsn` ...), every value under a
`headers:` mapping whatever the header's name (`X-MCP-Token`, `x-goog-api-key` ...), the
query values and userinfo of every URL (names, host and path stay), and whatever
`jsonlog.scrub` recognises. A placeholder is restored only where the current document,
redacted the same way, shows exactly the text that was sent back.
"""

from __future__ import annotations

import re
from typing import Any

from ferro_proxy.jsonlog import scrub
from ferro_proxy.url_redact import REDACTED, redact_url, rewrite_urls

_SECRET_NAMES = re.compile(
    r"(?i)^(api[_-]?key|x-api-key|apikey|authorization|proxy-authorization|cookie|password|passwd|"
    r"secret|token|access_token|refresh_token|session_token|secret_access_key|access_key_id|"
    r"service_account_json|client_secret|private_key|ca_key|dsn|.*_(api_key|secret|password|token|dsn))$"
)
_WHOLE_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.\-]*://\S*$")
# List entries matched by these fields, not by position, so reordering a list never moves
# one entry's secret onto another.
_IDENTITY = ("name", "virtual_key")


def _is_headers(key: str) -> bool:
    return key.lower() == "headers"


def _redact_text(value: str, key: str, in_headers: bool) -> str:
    if not value:
        return value
    if in_headers:
        return REDACTED
    if key and _SECRET_NAMES.match(key):
        if key.lower().endswith("dsn") and _WHOLE_URL.match(value):
            return redact_url(value)  # the host and database stay readable
        return REDACTED
    if _WHOLE_URL.match(value):
        return scrub(redact_url(value))
    return scrub(rewrite_urls(value, redact_url))


def redact(value: Any, key: str = "", in_headers: bool = False) -> Any:
    """A copy of `value` with secret fields, header values and URL secrets replaced by `[REDACTED]`."""
    if isinstance(value, dict):
        return {k: redact(v, str(k), in_headers or _is_headers(str(k))) for k, v in value.items()}
    if isinstance(value, list):
        return [redact(v, key, in_headers) for v in value]
    if isinstance(value, str):
        return _redact_text(value, key, in_headers)
    return value


def _current_entry(item: Any, index: int, current: list[Any]) -> Any:
    if isinstance(item, dict):
        for field in _IDENTITY:
            ident = item.get(field)
            if not isinstance(ident, str):
                continue
            same = [c for c in current if isinstance(c, dict) and c.get(field) == ident]
            if len(same) == 1:
                return same[0]
            if not same:
                return None  # a new entry: it has no secrets to inherit
    return current[index] if index < len(current) else None


def _current_value(current: dict[str, Any], key: str, in_headers: bool) -> Any:
    if key in current or not in_headers:
        return current.get(key)
    lowered = key.lower()  # header names are case-insensitive
    matches = [v for k, v in current.items() if isinstance(k, str) and k.lower() == lowered]
    return matches[0] if len(matches) == 1 else None


def restore_redacted(new: Any, current: Any, path: str = "") -> Any:
    """`new` with every `[REDACTED]` replaced by the value at the same place in `current`.

    Raises ValueError naming the path when there is nothing to restore it from."""
    return _restore(new, current, path, "", False)


def _restore(new: Any, current: Any, path: str, key: str, in_headers: bool) -> Any:
    if isinstance(new, dict):
        cur = current if isinstance(current, dict) else {}
        out = {}
        for k, v in new.items():
            name = str(k)
            out[k] = _restore(
                v,
                _current_value(cur, name, in_headers),
                f"{path}.{name}" if path else name,
                name,
                in_headers or _is_headers(name),
            )
        return out
    if isinstance(new, list):
        cur_list = current if isinstance(current, list) else []
        return [
            _restore(v, _current_entry(v, i, cur_list), f"{path}[{i}]", key, in_headers)
            for i, v in enumerate(new)
        ]
    if isinstance(new, str) and REDACTED in new:
        if isinstance(current, str) and _redact_text(current, key, in_headers) == new:
            return current
        raise ValueError(
            f"{path}: holds {REDACTED!r} but the current config has no matching value to keep there;"
            " send the whole new value to change it"
        )
    return new
