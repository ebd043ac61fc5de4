"""The one redaction point: every text that leaves the process passes `redact_text`.

It masks, with `[REDACTED]`,
- by value, every secret the gateway holds: a process-wide registry filled when a config
  is built (provider keys and header values, MCP tokens, DSN passwords, admin keys ...),
  plus the secrets of the request being served (the client's own provider key and its
  gateway key), kept in a context variable so concurrent requests never see each other's;
- by pattern, credentials it was never told about (bearer tokens, `sk-…`, `gsk_…`, `AIza…`,
  `AKIA…`, private keys, passwords in URLs ...).

`redact_known` masks by value only. It is for model output (stream chunks, answer bodies),
where a pattern would mangle legitimate text such as a code sample with `Bearer abc123`, but
where a key the gateway holds can only appear because an upstream echoed it.

Values shorter than `MIN_SECRET_LEN` are never registered: they would mask common words.
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any
from urllib.parse import quote

REDACTED = "[REDACTED]"
_REDACTED_BYTES = REDACTED.encode()
MIN_SECRET_LEN = 8

_TOKEN = r"[A-Za-z0-9._~+/=-]"
_KEY_NAMES = (
    "api_key",
    "api-key",
    "apikey",
    "goog-api-key",
    "access_token",
    "access-token",
    "auth_token",
    "auth-token",
    "client_secret",
    "client-secret",
    "password",
    "passwd",
)
_QUERY_NAMES = (
    "key",
    "api_key",
    "api-key",
    "apikey",
    "token",
    "access_token",
    "auth_token",
    "sig",
    "signature",
    "secret",
    "client_secret",
    "password",
)


def _names(names: tuple[str, ...]) -> str:
    return "|".join(re.escape(n) for n in names)


# Credentials by shape: (lower-case substrings one of which must be present, pattern). A
# pattern runs only when its trigger is in the text, which keeps the common case (no
# credential-looking text at all) to a few substring checks. A group named `keep` is a
# prefix left in place ("Bearer ", "?key=").
_RULES: tuple[tuple[tuple[str, ...], str, int], ...] = (
    # an Authorization value: long, or with a digit (so "Bearer header" stays readable)
    (
        ("bearer", "basic"),
        rf"(?P<keep>\b(?:bearer|basic)\s+)(?:(?={_TOKEN}*\d){_TOKEN}{{8,}}|{_TOKEN}{{20,}})",
        re.I,
    ),
    (
        ("private key-----",),
        r"-----BEGIN [A-Z ]*PRIVATE KEY-----[\s\S]*?(?:-----END [A-Z ]*PRIVATE KEY-----|$)",
        0,
    ),
    (("sk-",), r"\bsk-(?:ant-|proj-|or-|ferro-)?[A-Za-z0-9_-]{6,}", 0),
    (("gsk_",), r"\bgsk_[A-Za-z0-9]{10,}", 0),
    (("xai-",), r"\bxai-[A-Za-z0-9]{10,}", 0),
    (("hf_",), r"\bhf_[A-Za-z0-9]{10,}", 0),
    (("r8_",), r"\br8_[A-Za-z0-9]{10,}", 0),
    (("pplx-",), r"\bpplx-[A-Za-z0-9]{10,}", 0),
    (("fw_",), r"\bfw_[A-Za-z0-9]{10,}", 0),
    (("nvapi-",), r"\bnvapi-[A-Za-z0-9_-]{10,}", 0),
    (("aiza",), r"\bAIza[0-9A-Za-z_-]{20,}", 0),
    (("ya29.",), r"\bya29\.[0-9A-Za-z_-]{20,}", 0),
    (("akia", "asia"), r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b", 0),
    (("gh",), r"\bgh[pousr]_[A-Za-z0-9]{20,}", 0),
    (("gh",), r"\bgithub_pat_[A-Za-z0-9_]{20,}", 0),
    (("xox",), r"\bxox[abprs]-[A-Za-z0-9-]{10,}", 0),
    (("eyj",), r"\beyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}", 0),  # a JWT
    # the password in `scheme://user:password@host`
    (("://",), r"(?P<keep>://[^\s/:@\"']*:)[^\s/@\"']+(?=@)", 0),
    # `?key=…` in a URL
    (
        ("=",),
        rf"(?P<keep>[?&;](?:{_names(_QUERY_NAMES)})=)[^\s&\"'#<>]{{6,}}",
        re.I,
    ),
    # `api_key=…`, `"x-api-key": "…"`, `password: "…"`, a header line `x-api-key: k3y…`
    (
        ("api", "token", "secret", "passw"),
        rf"(?P<keep>\b(?:x-)?(?:{_names(_KEY_NAMES)})(?:=|[\"']?\s*:\s*[\"']|:\s*(?=[^\s\"']*\d)))"
        r"[^\s&\"',;}<>]{8,}",
        re.I,
    ),
)
_PATTERNS: tuple[tuple[tuple[str, ...], re.Pattern[str]], ...] = tuple(
    (triggers, re.compile(pattern, flags)) for triggers, pattern, flags in _RULES
)
_TRIGGERS: tuple[str, ...] = tuple(dict.fromkeys(t for triggers, _ in _PATTERNS for t in triggers))
PATTERNS: tuple[re.Pattern[str], ...] = tuple(p for _, p in _PATTERNS)

_lock = threading.Lock()
_values: dict[str, None] = {}  # insertion-ordered set of every registered form
_version = 0
_known_text: re.Pattern[str] | None = None  # registered values, longest first
_known_bytes: re.Pattern[bytes] | None = None
_compiled_version = 0
_sorted_values: list[str] = []  # the same values, longest first, for large texts
_sorted_bytes: list[bytes] = []
_ALTERNATION_LIMIT = 16 * 1024


# ------------------------------------------------------------------ registration


def _forms(value: str) -> Iterator[str]:
    """A secret as it may be quoted: itself, JSON-escaped, percent-encoded, and the token
    of a `Bearer <token>` header value; a PEM key line by line."""
    value = value.strip()
    if "PRIVATE KEY-----" in value:
        for line in value.replace("\\n", "\n").splitlines():
            line = line.strip()
            if len(line) >= 16 and not line.startswith("-----"):
                yield line
        return
    whole = [value]
    scheme, _, rest = value.partition(" ")
    if rest and scheme.isalpha():
        whole.append(rest.strip())
    for form in whole:
        yield form
        escaped = json.dumps(form)[1:-1]
        if escaped != form:
            yield escaped
        encoded = quote(form, safe="")
        if encoded != form:
            yield encoded


def register_many(values: Iterable[str | None]) -> int:
    """Remember secrets the gateway holds; returns how many forms were new."""
    global _version
    added = 0
    with _lock:
        for value in values:
            if not isinstance(value, str):
                continue
            for form in _forms(value):
                if len(form) >= MIN_SECRET_LEN and form not in _values:
                    _values[form] = None
                    added += 1
        if added:
            _version += 1
    return added


def register(value: str | None) -> int:
    return register_many((value,))


# Credentials that are replaced over time (cloud session tokens, OAuth access tokens, a token
# file kubelet rotates): per slot only the last ROTATING_KEPT generations stay registered, so a
# pod that refreshes every hour for months does not grow its registry without bound.
ROTATING_KEPT = 2
_rotating: dict[str, list[tuple[str, ...]]] = {}


def register_rotating(slot: str, *values: str | None) -> None:
    """Register the current generation of `slot`'s secrets, forgetting generations older
    than the previous one (which may still be quoted by a request in flight)."""
    global _version
    forms = tuple(
        dict.fromkeys(
            form for v in values if isinstance(v, str) for form in _forms(v) if len(form) >= MIN_SECRET_LEN
        )
    )
    with _lock:
        generations = _rotating.setdefault(slot, [])
        if generations and generations[-1] == forms:
            return
        generations.append(forms)
        del generations[:-ROTATING_KEPT]
        _version += 1


def _all_values() -> list[str]:
    rotating = (form for gens in _rotating.values() for gen in gens for form in gen)
    return list(dict.fromkeys([*_values, *rotating]))


def registered_count() -> int:
    with _lock:
        return len(_all_values())


def _compiled() -> re.Pattern[str] | None:
    """The alternation of registered values, rebuilt only after the registry changed."""
    global _known_text, _known_bytes, _compiled_version
    if _compiled_version != _version:
        with _lock:
            values = sorted(_all_values(), key=len, reverse=True)
            version = _version
        known = "|".join(re.escape(v) for v in values)
        _known_text = re.compile(known) if known else None
        _known_bytes = re.compile(known.encode()) if known else None
        _sorted_values[:] = values
        _sorted_bytes[:] = [v.encode() for v in values]
        _compiled_version = version
    return _known_text


def _mask_each(data: Any, values: list[Any], mask: Any) -> Any:
    """Past `_ALTERNATION_LIMIT` one substring search per value (memchr-fast) beats the
    alternation, which tries a match at every position that could start a secret."""
    for value in values:
        if value in data:
            data = data.replace(value, mask)
    return data


def _replace(match: re.Match[str]) -> str:
    kept = match.groupdict().get("keep")
    return kept + REDACTED if kept is not None else REDACTED


# ------------------------------------------------------------------ per request


class RequestSecrets:
    """The secrets of one request; `add` more while it is served (e.g. a key found late)."""

    __slots__ = ("values",)

    def __init__(self, values: Iterable[str | None] = ()) -> None:
        self.values: list[str] = []  # longest first
        for v in values:
            self.add(v)

    def add(self, value: str | None) -> None:
        if not isinstance(value, str):
            return
        for form in _forms(value):
            if len(form) >= MIN_SECRET_LEN and form not in self.values:
                self.values.append(form)
        self.values.sort(key=len, reverse=True)


_REQUEST: ContextVar[RequestSecrets | None] = ContextVar("ferro_request_secrets", default=None)


@contextmanager
def request_secrets(*values: str | None) -> Iterator[RequestSecrets]:
    """Mask `values` (and whatever is `add`ed later) in every text redacted inside the block,
    on this task and the tasks it starts, and nowhere else. An enclosing scope's values stay."""
    outer = _REQUEST.get()
    scope = RequestSecrets([*(outer.values if outer is not None else ()), *values])
    token = _REQUEST.set(scope)
    try:
        yield scope
    finally:
        _REQUEST.reset(token)


def add_request_secret(value: str | None) -> None:
    """Add a secret to the current request's (no-op outside a request)."""
    scope = _REQUEST.get()
    if scope is not None:
        scope.add(value)


# ------------------------------------------------------------------ redaction


def redact_text(text: str) -> str:
    """`text` with every known secret value and every credential-shaped string masked."""
    if len(text) < MIN_SECRET_LEN:
        return text
    scope = _REQUEST.get()
    if scope is not None:
        for value in scope.values:
            if value in text:
                text = text.replace(value, REDACTED)
    known = _compiled()
    if known is not None:
        if len(text) > _ALTERNATION_LIMIT:
            text = _mask_each(text, _sorted_values, REDACTED)
        else:
            text = known.sub(REDACTED, text)
    lowered = text.lower()
    present = {t for t in _TRIGGERS if t in lowered}
    if present:
        for triggers, pattern in _PATTERNS:
            if not present.isdisjoint(triggers):
                text = pattern.sub(_replace, text)
    return text


def redact_known(data: bytes) -> bytes:
    """`data` with the secret values the gateway holds masked (no patterns: see the module doc)."""
    if len(data) < MIN_SECRET_LEN:
        return data
    scope = _REQUEST.get()
    if scope is not None:
        for value in scope.values:
            raw = value.encode()
            if raw in data:
                data = data.replace(raw, _REDACTED_BYTES)
    _compiled()
    known = _known_bytes
    if known is None:
        return data
    if len(data) > _ALTERNATION_LIMIT:
        return _mask_each(data, _sorted_bytes, _REDACTED_BYTES)
    return known.sub(_REDACTED_BYTES, data)


def redact_obj(value: Any) -> Any:
    """`value` with `redact_text` applied to every string in it (dict values, list items);
    anything that is not JSON-native is rendered with `str()` first."""
    if isinstance(value, str):
        return redact_text(value)
    if value is None or isinstance(value, bool | int | float):
        return value
    if isinstance(value, dict):
        return {k: redact_obj(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [redact_obj(v) for v in value]
    return redact_text(str(value))
