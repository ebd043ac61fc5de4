"""Where the secrets the gateway holds come from, for the redaction registry: the values of
credential-named fields of a config document, every `headers:` value, passwords and secret
query values of URLs (DSNs included), key material, and credential-named environment
variables. Names decide, not shapes: a Mistral or Azure key looks like nothing in particular.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping
from typing import Any
from urllib.parse import parse_qsl, urlsplit

# Fields whose value is a credential (a whole name or its `_suffix`).
_SECRET_FIELD = re.compile(
    r"(?i)(?:^|_)(?:api_?key|secret_access_key|session_token|access_token|auth_token|refresh_token|token"
    r"|password|passwd|client_secret|hash_key|private_key|private_key_id|bootstrap_key|master_key)$"
)
# Fields that may hold key material or a file path to it: only material counts.
_MATERIAL_FIELD = re.compile(r"(?i)(?:^|_)(?:ca_key|service_account_json|credentials?)$")
# Fields holding a URL or DSN: its password and secret query values count.
_URL_FIELD = re.compile(r"(?i)(?:^|_)(?:url|dsn|endpoint|uri)$")
_SECRET_QUERY = re.compile(
    r"(?i)^(?:key|api[_-]?key|token|access[_-]?token|auth[_-]?token|auth|access_key|sig|signature|secret"
    r"|client_secret|password|credential)$"
)
# Environment variables: credential segments anywhere in the name (OPENAI_API_KEY, HF_TOKEN,
# ADMIN_BOOTSTRAP_KEY, AWS_SECRET_ACCESS_KEY, PGPASSWORD ...).
_SECRET_ENV = re.compile(r"(?i)(?:^|_)(?:KEY|TOKEN|SECRET|PASSWORD|PASSWD|PGPASSWORD)(?:$|_)")
_URL_ENV = re.compile(r"(?i)(?:_URL|_DSN|_URI|_ENDPOINT)$")
# Settings that merely share a credential-ish name (FOO_TOKEN_LIMIT=100000, X_KEY_MODE=disabled).
_NOT_A_SECRET = re.compile(r"^(?:[a-z]+|[A-Z]+|\d+(?:\.\d+)?)$")


def url_secrets(url: str) -> Iterator[str]:
    """The password and the secret query values of a URL (`postgresql://u:pw@h/db?sslkey=…`)."""
    if "://" not in url:
        return
    try:
        parts = urlsplit(url)
        if parts.password:
            yield parts.password
        for name, value in parse_qsl(parts.query, keep_blank_values=True):
            if value and _SECRET_QUERY.match(name):
                yield value
            elif not value and len(name) >= 16:  # a bare `?<token>`
                yield name
    except ValueError:
        return


def material_secrets(value: str) -> Iterator[str]:
    """Key material given inline: a PEM, or a JSON document (a service account) with keys."""
    text = value.strip()
    if "PRIVATE KEY-----" in text and not text.startswith("{"):
        yield text
        return
    if text.startswith("{"):
        try:
            data = json.loads(text)
        except ValueError:
            return
        yield from document_secrets(data)


def document_secrets(data: Any, name: str = "") -> Iterator[str]:
    """Every secret value in a parsed config document (or any part of one)."""
    if isinstance(data, Mapping):
        for key, value in data.items():
            key = str(key)
            if key.lower() == "headers" and isinstance(value, Mapping):
                yield from (v for v in value.values() if isinstance(v, str))
            else:
                yield from document_secrets(value, key)
    elif isinstance(data, list | tuple):
        for item in data:
            yield from document_secrets(item, name)
    elif isinstance(data, str) and data:
        if _SECRET_FIELD.search(name):
            yield data
        elif _MATERIAL_FIELD.search(name):
            yield from material_secrets(data)
        elif _URL_FIELD.search(name) or "://" in data:
            yield from url_secrets(data)


def env_secrets(env: Mapping[str, str]) -> Iterator[str]:
    """Values of credential-named environment variables, URL passwords, inline key material."""
    for name, value in env.items():
        if not value:
            continue
        if _SECRET_ENV.search(name) and not _NOT_A_SECRET.match(value) and not value.startswith("/"):
            yield value
        if _URL_ENV.search(name) or "://" in value:
            yield from url_secrets(value)
        if "PRIVATE KEY-----" in value or (value.startswith("{") and "private_key" in value):
            yield from material_secrets(value)
