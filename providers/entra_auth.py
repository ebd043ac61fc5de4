"""Microsoft Entra ID access tokens for Azure OpenAI and Azure AI Foundry, instead of `api-key`.

The OAuth2 client-credentials grant at
`{AZURE_AUTHORITY_HOST or https://login.microsoftonline.com}/{AZURE_TENANT_ID}/oauth2/v2.0/token`
for `AZURE_CLIENT_ID`, with the scope `https://cognitiveservices.azure.com/.default`,
authenticated by either
- `AZURE_CLIENT_SECRET` (an app registration's secret), or
- `AZURE_FEDERATED_TOKEN_FILE` (AKS workload identity: the projected ServiceAccount token
  sent as `client_assertion`, type `urn:ietf:params:oauth:client-assertion-type:jwt-bearer`;
  the file is re-read on every refresh because the kubelet rotates it).
A secret wins over a token file, as in the Azure SDKs' EnvironmentCredential. The answer's
`access_token` is sent as `Authorization: Bearer …` (`providers.token_cache` caches and
refreshes it early).

`credentials:` in the provider's config: `auto` (default: the `api-key` when one is
configured, else Entra ID when the variables are set, else the client's own key),
`api_key`, or `entra`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import aiohttp

from ferro_proxy import redaction
from ferro_proxy.config import ConfigError
from providers.base import ProviderSpec, ResolvedSettings
from providers.token_cache import CachedToken, auth_error, call_json, error_reason, lifetime_from

log = logging.getLogger("ferro_proxy.providers.entra")

DEFAULT_AUTHORITY = "https://login.microsoftonline.com"
COGNITIVE_SERVICES_SCOPE = "https://cognitiveservices.azure.com/.default"
JWT_BEARER_ASSERTION = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
SOURCE = "Entra ID"
SOURCES = ("auto", "api_key", "entra")


@dataclass(frozen=True)
class EntraApp:
    tenant_id: str
    client_id: str
    client_secret: str | None = None
    federated_token_file: str | None = None
    authority: str = DEFAULT_AUTHORITY

    @property
    def token_url(self) -> str:
        return f"{self.authority.rstrip('/')}/{self.tenant_id}/oauth2/v2.0/token"

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> EntraApp | None:
        """The app the environment names; None when it names none; ValueError when it is partial."""
        client_id, tenant = env.get("AZURE_CLIENT_ID"), env.get("AZURE_TENANT_ID")
        secret, token_file = env.get("AZURE_CLIENT_SECRET"), env.get("AZURE_FEDERATED_TOKEN_FILE")
        if not (client_id or tenant or secret or token_file):
            return None
        missing = [n for n, v in (("AZURE_CLIENT_ID", client_id), ("AZURE_TENANT_ID", tenant)) if not v]
        if not (secret or token_file):
            missing.append("AZURE_CLIENT_SECRET or AZURE_FEDERATED_TOKEN_FILE")
        if missing:
            raise ValueError(f"Entra ID needs {', '.join(missing)}")
        assert client_id and tenant
        return cls(
            tenant_id=tenant,
            client_id=client_id,
            client_secret=secret or None,
            federated_token_file=None if secret else token_file,
            authority=env.get("AZURE_AUTHORITY_HOST") or DEFAULT_AUTHORITY,
        )


def configured_in_env(env: Mapping[str, str]) -> bool:
    """Complete Entra ID variables, judged without I/O."""
    try:
        return EntraApp.from_env(env) is not None
    except ValueError:
        return False


class EntraTokens:
    def __init__(self, app: EntraApp, provider: str, scope: str = COGNITIVE_SERVICES_SCOPE) -> None:
        self.app = app
        self.provider = provider
        self.scope = scope

    async def fetch(self, session: aiohttp.ClientSession) -> tuple[str, float]:
        app = self.app
        form = {"grant_type": "client_credentials", "client_id": app.client_id, "scope": self.scope}
        if app.client_secret:
            form["client_secret"] = app.client_secret
        else:
            assert app.federated_token_file is not None
            try:
                assertion = (await asyncio.to_thread(Path(app.federated_token_file).read_text)).strip()
            except OSError as exc:
                raise auth_error(
                    self.provider, SOURCE, f"cannot read AZURE_FEDERATED_TOKEN_FILE ({type(exc).__name__})"
                ) from None
            if not assertion:
                raise auth_error(self.provider, SOURCE, "AZURE_FEDERATED_TOKEN_FILE is empty")
            redaction.register_rotating(f"{self.provider}:entra_federated_token", assertion)
            form["client_assertion_type"] = JWT_BEARER_ASSERTION
            form["client_assertion"] = assertion
        status, data, _, _ = await call_json(
            session, "POST", app.token_url, data=form, provider=self.provider, source=SOURCE
        )
        if status >= 400 or not isinstance(data, dict) or not data.get("access_token"):
            reason = error_reason(data, status) if status >= 400 else "no access_token in the answer"
            raise auth_error(self.provider, SOURCE, f"the token request failed ({status}): {reason}")
        return str(data["access_token"]), lifetime_from(data.get("expires_in"))


class EntraAuth:
    """A provider's Entra ID bearer: `await ensure(session)` before building headers."""

    def __init__(self, tokens: CachedToken) -> None:
        self.tokens = tokens

    def start(self, session: aiohttp.ClientSession) -> None:
        self.tokens.prefetch(session)

    async def ensure(self, session: aiohttp.ClientSession) -> None:
        await self.tokens.get(session)

    def headers(self) -> dict[str, str]:
        token = self.tokens.current() or self.tokens.latest
        return {"Authorization": f"Bearer {token}"} if token else {}

    async def close(self) -> None:
        await self.tokens.close()


def for_provider(settings: ResolvedSettings) -> EntraAuth | None:
    """Entra ID for this provider, or None (its `api-key`, or the client's own key)."""
    source = settings.extra.credentials or "auto"
    where = f"providers.{settings.name}.credentials"
    if source not in SOURCES:
        raise ConfigError([f"{where}: {source!r} is not one of {', '.join(SOURCES)}"])
    if source == "api_key" or (source == "auto" and settings.api_key):
        return None
    try:
        app = EntraApp.from_env(settings.env)
    except ValueError as exc:
        if source == "entra":
            raise ConfigError([f"{where}: {exc}"]) from None
        log.warning("%s: Entra ID not used: %s", settings.name, exc)
        return None
    if app is None:
        if source == "entra":
            raise ConfigError([f"{where}: entra needs AZURE_CLIENT_ID and AZURE_TENANT_ID set"])
        return None
    tokens = EntraTokens(app, settings.name)
    return EntraAuth(CachedToken(tokens.fetch, f"{settings.name} {SOURCE}"))


class EntraEnabledSpec(ProviderSpec):
    """Enabled as before (endpoint + key), or by the endpoint + complete Entra ID variables."""

    def enabled_by_env(self, env: Mapping[str, str]) -> bool:
        if super().enabled_by_env(env):
            return True
        return all(env.get(v) for v in self.env_required) and configured_in_env(env)
