"""Google workload identity federation: an `external_account` credentials file → access tokens.

1. The subject token (an OIDC token from another identity provider: a Kubernetes projected
   ServiceAccount token, GitHub's, Azure's ...) is read from `credential_source.file`
   (re-read on every refresh, since it rotates) or fetched from `credential_source.url` with
   its `headers`; `format` is `{"type": "text"}` (the default) or
   `{"type": "json", "subject_token_field_name": "..."}`.
2. It is exchanged at `token_url` (Google STS, RFC 8693): a form POST of
   `grant_type=urn:ietf:params:oauth:grant-type:token-exchange`, `requested_token_type`
   (an access token), the file's `subject_token_type` and `audience`, and the cloud-platform
   scope; `client_id` + `client_secret`, when the file has them, authenticate it (HTTP Basic).
3. With `service_account_impersonation_url`, the STS token is traded for the service
   account's own token: POST `{"scope": [...], "lifetime": "3600s"}` with the STS token as
   bearer, answer `{"accessToken", "expireTime"}`.

AWS (`credential_source.environment_id`) and executable-sourced files are not supported.
"""

from __future__ import annotations

import asyncio
import base64
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import orjson

from ferro_proxy import redaction
from ferro_proxy.errors import GatewayError
from providers.google_auth import CLOUD_PLATFORM_SCOPE
from providers.token_cache import CachedToken, auth_error, call_json, error_reason, lifetime_from

DEFAULT_STS_URL = "https://sts.googleapis.com/v1/token"
TOKEN_EXCHANGE_GRANT = "urn:ietf:params:oauth:grant-type:token-exchange"
ACCESS_TOKEN_TYPE = "urn:ietf:params:oauth:token-type:access_token"
SOURCE = "workload identity federation"


@dataclass(frozen=True)
class ExternalAccount:
    audience: str
    subject_token_type: str
    token_url: str = DEFAULT_STS_URL
    source_file: str | None = None
    source_url: str | None = None
    source_headers: dict[str, str] = field(default_factory=dict)
    json_field: str | None = None  # the subject token is this field of a JSON document
    impersonation_url: str | None = None
    impersonation_lifetime: int = 3600
    client_id: str | None = None
    client_secret: str | None = None
    user_project: str | None = None  # workforce pools
    project_id: str | None = None

    @classmethod
    def from_data(cls, data: dict[str, Any]) -> ExternalAccount:
        """An `external_account` file's JSON. Errors name fields, never values."""
        missing = [k for k in ("audience", "subject_token_type", "credential_source") if not data.get(k)]
        if missing:
            raise ValueError(f"the external_account file lacks {', '.join(missing)}")
        source = data["credential_source"]
        if not isinstance(source, dict):
            raise ValueError("credential_source is not an object")
        if source.get("environment_id") or source.get("executable"):
            raise ValueError(
                "only file- and url-sourced external accounts are supported (not AWS or executable)"
            )
        if not (source.get("file") or source.get("url")):
            raise ValueError("credential_source needs file or url")
        fmt = source.get("format") or {}
        fmt_type = fmt.get("type", "text") if isinstance(fmt, dict) else None
        if fmt_type not in ("text", "json"):
            raise ValueError("credential_source.format.type must be text or json")
        json_field = fmt.get("subject_token_field_name") if fmt_type == "json" else None
        if fmt_type == "json" and not json_field:
            raise ValueError("credential_source.format.subject_token_field_name is required for json")
        headers = source.get("headers") or {}
        if not isinstance(headers, dict):
            raise ValueError("credential_source.headers is not an object")
        impersonation = data.get("service_account_impersonation") or {}
        lifetime = impersonation.get("token_lifetime_seconds") if isinstance(impersonation, dict) else None
        return cls(
            audience=str(data["audience"]),
            subject_token_type=str(data["subject_token_type"]),
            token_url=str(data.get("token_url") or DEFAULT_STS_URL),
            source_file=str(source["file"]) if source.get("file") else None,
            source_url=str(source["url"]) if source.get("url") else None,
            source_headers={str(k): str(v) for k, v in headers.items()},
            json_field=str(json_field) if json_field else None,
            impersonation_url=data.get("service_account_impersonation_url") or None,
            impersonation_lifetime=int(lifetime or 3600),
            client_id=data.get("client_id") or None,
            client_secret=data.get("client_secret") or None,
            user_project=data.get("workforce_pool_user_project") or None,
            project_id=data.get("project_id") or data.get("quota_project_id") or None,
        )


class ExternalAccountTokens:
    def __init__(self, account: ExternalAccount, provider: str, scope: str = CLOUD_PLATFORM_SCOPE) -> None:
        self.account = account
        self.provider = provider
        self.scope = scope

    def _fail(self, message: str) -> GatewayError:
        return auth_error(self.provider, SOURCE, message)

    async def subject_token(self, session: aiohttp.ClientSession) -> str:
        acct = self.account
        if acct.source_file:
            try:
                raw = await asyncio.to_thread(Path(acct.source_file).read_bytes)
            except OSError as exc:
                raise self._fail(f"cannot read the subject token file ({type(exc).__name__})") from None
        else:
            assert acct.source_url is not None
            status, _, raw, _ = await call_json(
                session,
                "GET",
                acct.source_url,
                headers=acct.source_headers,
                provider=self.provider,
                source=SOURCE,
            )
            if status >= 400:
                raise self._fail(f"the subject token URL answered {status}")
        if acct.json_field is None:
            token = raw.decode("utf-8", "replace").strip()
        else:
            try:
                doc = orjson.loads(raw)
            except orjson.JSONDecodeError:
                doc = None
            token = str(doc.get(acct.json_field) or "") if isinstance(doc, dict) else ""
        if not token:
            raise self._fail("the subject token is empty")
        redaction.register_rotating(f"{self.provider}:google_subject_token", token)
        return token

    async def _exchange(self, session: aiohttp.ClientSession, subject: str) -> tuple[str, float]:
        acct = self.account
        form = {
            "grant_type": TOKEN_EXCHANGE_GRANT,
            "requested_token_type": ACCESS_TOKEN_TYPE,
            "subject_token_type": acct.subject_token_type,
            "subject_token": subject,
            "audience": acct.audience,
            "scope": self.scope,
        }
        headers = {}
        if acct.client_id and acct.client_secret:
            basic = base64.b64encode(f"{acct.client_id}:{acct.client_secret}".encode()).decode()
            headers["Authorization"] = "Basic " + basic
        elif acct.user_project:
            form["options"] = orjson.dumps({"userProject": acct.user_project}).decode()
        status, data, _, _ = await call_json(
            session, "POST", acct.token_url, data=form, headers=headers, provider=self.provider, source=SOURCE
        )
        if status >= 400 or not isinstance(data, dict) or not data.get("access_token"):
            reason = error_reason(data, status) if status >= 400 else "no access_token in the answer"
            raise self._fail(f"the STS token exchange failed ({status}): {reason}")
        return str(data["access_token"]), lifetime_from(data.get("expires_in"))

    async def _impersonate(
        self, session: aiohttp.ClientSession, url: str, sts_token: str
    ) -> tuple[str, float]:
        body = {"scope": [self.scope], "lifetime": f"{self.account.impersonation_lifetime}s"}
        status, data, _, _ = await call_json(
            session,
            "POST",
            url,
            data=orjson.dumps(body),
            headers={"Authorization": "Bearer " + sts_token, "Content-Type": "application/json"},
            provider=self.provider,
            source=SOURCE,
        )
        if status >= 400 or not isinstance(data, dict) or not data.get("accessToken"):
            reason = error_reason(data, status) if status >= 400 else "no accessToken in the answer"
            raise self._fail(f"service account impersonation failed ({status}): {reason}")
        return str(data["accessToken"]), _seconds_until(data.get("expireTime"))

    async def fetch(self, session: aiohttp.ClientSession) -> tuple[str, float]:
        subject = await self.subject_token(session)
        token, lifetime = await self._exchange(session, subject)
        if self.account.impersonation_url:
            redaction.register_rotating(f"{self.provider}:google_sts_token", token)
            return await self._impersonate(session, self.account.impersonation_url, token)
        return token, lifetime

    def tokens(self) -> CachedToken:
        return CachedToken(self.fetch, f"{self.provider} {SOURCE}")


def _seconds_until(expire_time: Any) -> float:
    """Seconds until an RFC 3339 `expireTime` ("2025-01-01T12:00:00Z", fractions allowed)."""
    try:
        when = datetime.fromisoformat(str(expire_time).replace("Z", "+00:00"))
    except ValueError:
        return lifetime_from(None)
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return lifetime_from(when.timestamp() - time.time())
