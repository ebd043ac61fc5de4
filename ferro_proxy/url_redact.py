"""Taking the secrets out of URLs: query values, userinfo, and URLs quoted inside free text."""

from __future__ import annotations

import re
from collections.abc import Callable
from urllib.parse import urlsplit, urlunsplit

REDACTED = "[REDACTED]"
# A URL inside free text: up to the first blank, quote or bracket.
_URL_IN_TEXT = re.compile(r"\b[A-Za-z][A-Za-z0-9+.\-]*://[^\s'\"<>()\[\]{}`]+")


def _host_port(parts) -> str:
    host = parts.hostname or ""
    if ":" in host:  # IPv6 literal
        host = f"[{host}]"
    try:
        port = parts.port
    except ValueError:
        port = None
    return f"{host}:{port}" if port else host


def _redact_param(param: str) -> str:
    if not param:
        return param
    name, eq, _ = param.partition("=")
    return f"{name}={REDACTED}" if eq else REDACTED  # a bare `?<token>` is all value


def redact_url(value: str) -> str:
    """`value` with every query value and the userinfo secret replaced by `[REDACTED]`;
    parameter names, host and path stay, so an operator still sees what is configured.

    A user name without a password is masked too: `https://<token>@host` is common."""
    if "://" not in value:
        return value
    try:
        parts = urlsplit(value)
        netloc = parts.netloc
        if "@" in netloc:
            if parts.password is not None:
                netloc = f"{parts.username}:{REDACTED}@{_host_port(parts)}"
            else:
                netloc = f"{REDACTED}@{_host_port(parts)}"
        query = "&".join(_redact_param(p) for p in parts.query.split("&")) if parts.query else ""
    except ValueError:
        return REDACTED
    return urlunsplit(parts._replace(netloc=netloc, query=query))


def url_origin(value: str) -> str:
    """`scheme://host[:port]` of a URL: no userinfo, path, query or fragment."""
    try:
        parts = urlsplit(value)
    except ValueError:
        return REDACTED
    if not parts.scheme or not parts.hostname:
        return REDACTED
    return f"{parts.scheme}://{_host_port(parts)}"


def strip_url_secrets(value: str) -> str:
    """A URL without userinfo, query or fragment (the path stays)."""
    try:
        parts = urlsplit(value)
    except ValueError:
        return REDACTED
    if not parts.scheme or not parts.hostname:
        return REDACTED
    return urlunsplit((parts.scheme, _host_port(parts), parts.path, "", ""))


def rewrite_urls(text: str, rewrite: Callable[[str], str]) -> str:
    """`text` with every URL found in it passed through `rewrite`."""
    if "://" not in text:
        return text

    def one(m: re.Match[str]) -> str:
        url = m.group(0)
        kept = url.rstrip(".,;:!?")  # sentence punctuation after a URL is not part of it
        return rewrite(kept) + url[len(kept) :]

    return _URL_IN_TEXT.sub(one, text)
