"""Google service-account credentials → OAuth2 access tokens (the JWT bearer grant, RFC 7523).

A JWT naming the service account (`iss`), the token endpoint (`aud`) and the scope is signed
locally with the account's RSA key (RS256), exchanged at the account's `token_uri`, and the
access token is cached and refreshed before it expires (`providers.token_cache`).
`cryptography` is imported only when signing.
"""

from __future__ import annotations

import base64
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import orjson

from providers.token_cache import CachedToken, auth_error, call_json, error_reason, lifetime_from

CLOUD_PLATFORM_SCOPE = "https://www.googleapis.com/auth/cloud-platform"
DEFAULT_TOKEN_URI = "https://oauth2.googleapis.com/token"
JWT_BEARER_GRANT = "urn:ietf:params:oauth:grant-type:jwt-bearer"
ASSERTION_LIFETIME = 3600  # seconds; Google accepts at most one hour
SOURCE = "service account"


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


@dataclass(frozen=True)
class ServiceAccount:
    client_email: str
    private_key: str  # PEM
    private_key_id: str | None = None
    token_uri: str = DEFAULT_TOKEN_URI
    project_id: str | None = None

    @classmethod
    def from_setting(cls, value: str) -> ServiceAccount:
        """A service-account key file: its JSON text, or the path of the file holding it.

        Errors never quote the value: it holds a private key.
        """
        text = value.strip()
        if not text.startswith("{"):
            try:
                text = Path(text).expanduser().read_text()
            except OSError as exc:
                raise ValueError(f"cannot read the service account file ({type(exc).__name__})") from None
        try:
            data = orjson.loads(text)
        except orjson.JSONDecodeError:
            raise ValueError("the service account JSON is not valid JSON") from None
        if not isinstance(data, dict):
            raise ValueError("the service account JSON is not an object")
        return cls.from_data(data)

    @classmethod
    def from_data(cls, data: dict[str, Any]) -> ServiceAccount:
        missing = [k for k in ("client_email", "private_key") if not data.get(k)]
        if missing:
            raise ValueError(f"the service account JSON lacks {', '.join(missing)}")
        return cls(
            client_email=str(data["client_email"]),
            private_key=str(data["private_key"]),
            private_key_id=data.get("private_key_id"),
            token_uri=str(data.get("token_uri") or DEFAULT_TOKEN_URI),
            project_id=str(data["project_id"]) if data.get("project_id") else None,
        )


def signed_assertion(account: ServiceAccount, scope: str, now: int) -> str:
    """The RS256-signed JWT the token endpoint exchanges for an access token."""
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import padding, rsa

    header: dict[str, Any] = {"alg": "RS256", "typ": "JWT"}
    if account.private_key_id:
        header["kid"] = account.private_key_id
    claims = {
        "iss": account.client_email,
        "scope": scope,
        "aud": account.token_uri,
        "iat": now,
        "exp": now + ASSERTION_LIFETIME,
    }
    signing_input = f"{_b64url(orjson.dumps(header))}.{_b64url(orjson.dumps(claims))}".encode()
    key = serialization.load_pem_private_key(account.private_key.encode(), password=None)
    if not isinstance(key, rsa.RSAPrivateKey):
        raise ValueError("the service account private key is not an RSA key")
    signature = key.sign(signing_input, padding.PKCS1v15(), hashes.SHA256())
    return signing_input.decode() + "." + _b64url(signature)


def service_account_token(
    account: ServiceAccount, provider: str, scope: str = CLOUD_PLATFORM_SCOPE
) -> CachedToken:
    """Access tokens for one service account (the JWT bearer grant), cached and refreshed early."""

    async def fetch(session: aiohttp.ClientSession) -> tuple[str, float]:
        try:
            assertion = signed_assertion(account, scope, int(time.time()))
        except ValueError as exc:
            raise auth_error(provider, SOURCE, f"cannot sign the token request: {exc}") from None
        form = {"grant_type": JWT_BEARER_GRANT, "assertion": assertion}
        status, data, _, _ = await call_json(
            session, "POST", account.token_uri, data=form, provider=provider, source=SOURCE
        )
        if status >= 400 or not isinstance(data, dict) or not data.get("access_token"):
            reason = error_reason(data, status) if status >= 400 else "no access_token in the answer"
            raise auth_error(provider, SOURCE, f"the token exchange failed ({status}): {reason}")
        return str(data["access_token"]), lifetime_from(data.get("expires_in"), ASSERTION_LIFETIME)

    return CachedToken(fetch, f"{provider} service account")
