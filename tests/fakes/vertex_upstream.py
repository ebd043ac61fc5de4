"""A fake Vertex AI: the Google Gen AI routes of `FakeGoogle` plus an OAuth2 token endpoint.

The token endpoint implements the JWT bearer grant as Google's does: a form POST with
`grant_type=urn:ietf:params:oauth:grant-type:jwt-bearer` and an RS256 `assertion`, whose
signature is verified with the service account's public key and whose claims (iss, aud,
scope, iat/exp at most an hour apart) are checked. It answers
`{"access_token", "expires_in", "token_type": "Bearer"}` or `{"error", "error_description"}`.
"""

from __future__ import annotations

import base64
import secrets
import time
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from tests.fakes.gemini_upstream import FakeGoogle


def _b64url_decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


@dataclass
class FakeVertex(FakeGoogle):
    public_key: rsa.RSAPublicKey | None = None
    client_email: str = "gateway@my-project.iam.gserviceaccount.com"
    token_lifetime: int = 3600
    token_requests: list[dict[str, Any]] = field(default_factory=list)  # verified JWT claims

    @property
    def token_uri(self) -> str:
        return f"{self.base_url}/token"

    def extra_routes(self, app: web.Application) -> None:
        app.router.add_post("/token", self.token)

    async def token(self, request: web.Request) -> web.Response:
        form = await request.post()
        if form.get("grant_type") != "urn:ietf:params:oauth:grant-type:jwt-bearer":
            return self._oauth_error("unsupported_grant_type", "Invalid grant_type.")
        assertion = str(form.get("assertion") or "")
        try:
            header_b64, claims_b64, sig_b64 = assertion.split(".")
            header = orjson.loads(_b64url_decode(header_b64))
            claims = orjson.loads(_b64url_decode(claims_b64))
            signature = _b64url_decode(sig_b64)
        except ValueError:
            return self._oauth_error("invalid_request", "Malformed assertion.")
        if header.get("alg") != "RS256":
            return self._oauth_error("invalid_grant", "Invalid JWT: alg must be RS256.")
        assert self.public_key is not None
        try:
            self.public_key.verify(
                signature, f"{header_b64}.{claims_b64}".encode(), padding.PKCS1v15(), hashes.SHA256()
            )
        except InvalidSignature:
            return self._oauth_error("invalid_grant", "Invalid JWT Signature.")
        now = time.time()
        if claims.get("iss") != self.client_email:
            return self._oauth_error("invalid_grant", "Invalid issuer.")
        if claims.get("aud") != self.token_uri:
            return self._oauth_error(
                "invalid_grant",
                "Invalid JWT: Token must be a short-lived token and in a reasonable timeframe.",
            )
        if "https://www.googleapis.com/auth/cloud-platform" not in str(claims.get("scope", "")).split():
            return self._oauth_error("invalid_scope", "Invalid OAuth scope.")
        iat, exp = claims.get("iat", 0), claims.get("exp", 0)
        if not (iat - 300 <= now <= exp) or exp - iat > 3600:
            return self._oauth_error("invalid_grant", "Invalid JWT: Token must be a short-lived token.")
        self.token_requests.append(claims)
        token = "ya29.fake-" + secrets.token_hex(8)
        self.bearer_tokens.add(token)
        return web.json_response(
            {"access_token": token, "expires_in": self.token_lifetime, "token_type": "Bearer"}
        )

    def _oauth_error(self, error: str, description: str) -> web.Response:
        return web.json_response({"error": error, "error_description": description}, status=400)
