"""Client-named paths: a pass-through names a path below `/v1/`, never a way out of it.

The client's raw request target is checked before any provider is picked (`check_target`),
and the upstream URL is checked again once it is built (`upstream_url`). Both refuse with
400 `invalid_proxy_path`. The path is percent-decoded until it stops changing, and every
layer is checked, so `%2e%2e`, `..%2f`, `%252e%252e` and mixed case all count as `..`.
The raw form (one encoding layer, as the client sent it) is what is forwarded.
"""

from __future__ import annotations

import re
from urllib.parse import unquote_to_bytes

from yarl import URL

from ferro_proxy.errors import GatewayError

PREFIX = "/v1"
MAX_DECODE_ROUNDS = 3  # a legitimate path is encoded once; more layers than this is an attack
_BAD_ESCAPE = re.compile(r"%(?![0-9A-Fa-f]{2})")
# C0 controls, DEL and C1 controls; backslash (a separator for some servers);
# ";" path parameters (`..;/` walks up a directory on Tomcat-style servers).
_BAD_CHAR = re.compile(r"[\x00-\x1f\x7f-\x9f\\;]")
_CHAR_REASONS = {"\\": "backslash", ";": "path parameter ';'"}
_RAW_OK = re.compile(r"[\x21-\x7e]*")  # the request target itself: printable ASCII, percent-encoded


def invalid_path(reason: str) -> GatewayError:
    return GatewayError(400, f"invalid pass-through path: {reason}", code="invalid_proxy_path")


def _check_layer(path: str) -> None:
    if (m := _BAD_CHAR.search(path)) is not None:
        raise invalid_path(_CHAR_REASONS.get(m.group(), "control byte"))
    segments = path.split("/")[1:]
    for i, segment in enumerate(segments):
        if segment == "" and i < len(segments) - 1:  # a trailing "/" is fine, "//" is not
            raise invalid_path("empty segment")
        if segment and not segment.strip(". "):  # ".", "..", and what some servers trim to them
            raise invalid_path("dot segment")


def check_path(path: str) -> None:
    """Refuse a raw (percent-encoded) path that is, or decodes to, anything but plain segments."""
    layer = path
    for _ in range(MAX_DECODE_ROUNDS + 1):
        if _BAD_ESCAPE.search(layer):
            raise invalid_path("invalid percent-encoding")
        _check_layer(layer)
        try:
            decoded = unquote_to_bytes(layer).decode("utf-8")
        except UnicodeDecodeError:
            raise invalid_path("not UTF-8") from None
        if decoded == layer:
            return
        layer = decoded
    raise invalid_path("encoded too many times")


def check_target(raw_target: str) -> str:
    """The part of the client's raw request target after `/v1` (path and query, as sent),
    safe to append to a provider's base URL."""
    if not _RAW_OK.fullmatch(raw_target):
        raise invalid_path("characters outside printable ASCII must be percent-encoded")
    if "#" in raw_target:
        raise invalid_path("fragment")
    path, sep, query = raw_target.partition("?")
    if not path.startswith(PREFIX + "/"):
        raise invalid_path(f"not below {PREFIX}/")
    check_path(path)
    return path[len(PREFIX) :] + sep + query


def upstream_url(base_url: str, sub_target: str) -> URL:
    """`base_url` + `sub_target` (from `check_target`), verified to stay on the base's scheme,
    host and port and below its path, however the URL is later parsed."""
    sub_path, _, query = sub_target.partition("?")
    if not sub_path.startswith("/") or "#" in sub_target or not _RAW_OK.fullmatch(sub_target):
        raise invalid_path("not a path")
    check_path(sub_path)
    base = URL(base_url)
    origin = (base.scheme, base.host, base.port, base.user)
    base_path = base.raw_path.rstrip("/")
    url = URL.build(
        scheme=base.scheme,
        authority=base.raw_authority,
        path=base_path + sub_path,
        query_string="&".join(q for q in (base.raw_query_string, query) if q),
        encoded=True,
    )
    for candidate in (url, URL(str(url))):  # as built, and as a normalising parser reads it
        same_origin = (candidate.scheme, candidate.host, candidate.port, candidate.user) == origin
        path = candidate.raw_path
        below = path == base_path or path.startswith(base_path + "/")
        if not same_origin or not below or candidate.raw_fragment:
            raise invalid_path("leaves the provider's base URL")
    return url


MAX_MODEL_NAME = 256
# What model ids use: letters, digits and `-_.:/@+~` (`ft:gpt-4o:org::id`, `owner/model`,
# `claude-3@20240229`, `llama3:8b`). Nothing that could end or leave a URL path.
_MODEL_OK = re.compile(r"[A-Za-z0-9@][A-Za-z0-9\-_.:/@+~]*")


def check_model_name(model: str) -> None:
    """A client's `model` becomes part of upstream URLs (Gemini, Vertex, Azure deployments,
    Hugging Face, Replicate): refuse anything that could leave the provider's base path."""
    problem = None
    if len(model) > MAX_MODEL_NAME:
        problem = f"longer than {MAX_MODEL_NAME} characters"
    elif not _MODEL_OK.fullmatch(model):
        problem = "only letters, digits and - _ . : / @ + ~ are allowed"
    elif any(not segment.strip(".") for segment in model.split("/")):
        problem = "empty, '.' or '..' path segment"
    if problem is not None:
        raise GatewayError(
            400, f"invalid model name: {problem}", code="invalid_model_name", param="model"
        )
