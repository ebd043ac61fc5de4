"""Google service-account credentials → OAuth2 access tokens (the JWT bearer grant, RFC 7523).

A JWT naming the service account (`iss`), the token endpoint (`aud`) and the scope is signed
locally with the account's RSA key (RS256), exchanged at the account's `token_uri`, and the
access token is cached until shortly before it expires. One refresh runs at a time; the
requests waiting for it share its result. `cryptography` is imported only when signing.
"""

from __future__ import annotations

import asyncio
import base64
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import orjson

from ferro_proxy.errors import GatewayError

CLOUD_PLATFORM_SCOPE = "https://www.googleapis.com/auth/cloud-platform"
DEFAULT_TOKEN_URI = "https://oauth2.googleapis.com/token"
JWT_BEARER_GRANT = "urn:ietf:params:oauth:grant-type:jwt-bearer"
ASSERTION_LIFETIME = 3600  # seconds; Google accepts at most one hour
REFRESH_MARGIN = 60  # refresh this long before the token expires


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


@dataclass(frozen=True)
class ServiceAccount:
    client_email: str
    private_key: str  # PEM
    private_key_id: str | None = None
    token_uri: str = DEFAULT_TOKEN_URI

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
        missing = [k for k in ("client_email", "private_key") if not data.get(k)]
        if missing:
            raise ValueError(f"the service account JSON lacks {', '.join(missing)}")
        return cls(
            client_email=str(data["client_email"]),
            private_key=str(data["private_key"]),
            private_key_id=data.get("private_key_id"),
            token_uri=str(data.get("token_uri") or DEFAULT_TOKEN_URI),
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


class TokenSource:
    """Access tokens for one service account, cached until shortly before expiry."""

    def __init__(self, account: ServiceAccount, provider: str, scope: str = CLOUD_PLATFORM_SCOPE) -> None:
        self.account = account
        self.provider = provider
        self.scope = scope
        self._token: str | None = None
        self._expires_at = 0.0
        self._lock = asyncio.Lock()

    def _fresh(self) -> bool:
        return self._token is not None and time.time() < self._expires_at - REFRESH_MARGIN

    async def token(self, session: aiohttp.ClientSession, timeout: aiohttp.ClientTimeout) -> str:
        if self._fresh():
            assert self._token is not None
            return self._token
        async with self._lock:
            if not self._fresh():  # another request may have refreshed it meanwhile
                await self._refresh(session, timeout)
            assert self._token is not None
            return self._token

    async def _refresh(self, session: aiohttp.ClientSession, timeout: aiohttp.ClientTimeout) -> None:
        now = int(time.time())
        try:
            assertion = signed_assertion(self.account, self.scope, now)
        except ValueError as exc:
            raise self._error(f"cannot sign the token request: {exc}") from None
        form = {"grant_type": JWT_BEARER_GRANT, "assertion": assertion}
        try:
            async with session.post(self.account.token_uri, data=form, timeout=timeout) as resp:
                raw = await resp.read()
                status = resp.status
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            raise self._error(f"the token endpoint could not be reached ({type(exc).__name__})") from None
        try:
            data = orjson.loads(raw)
        except orjson.JSONDecodeError:
            data = None
        data = data if isinstance(data, dict) else {}
        if status >= 400 or not data.get("access_token"):
            reason = data.get("error_description") or data.get("error") or "no access_token in the answer"
            raise self._error(f"the token exchange failed ({status}): {reason}")
        self._token = str(data["access_token"])
        self._expires_at = now + float(data.get("expires_in") or ASSERTION_LIFETIME)

    def _error(self, message: str) -> GatewayError:
        return GatewayError(
            502,
            f"{self.provider}: service account authentication failed: {message}",
            code="upstream_auth_error",
            type="api_error",
            provider=self.provider,
        )
