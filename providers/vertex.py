"""Vertex AI adapter: Gemini models at
`{base}/v1/projects/{p}/locations/{r}/publishers/google/models/{m}:generateContent`
(and `:streamGenerateContent?alt=sse`, `:predict` for text embeddings and Imagen), sharing
the Gemini translation.

Enabled by VERTEX_AI_REGION + a credential: VERTEX_AI_PROJECT_ID with VERTEX_AI_API_KEY or
VERTEX_AI_SERVICE_ACCOUNT_JSON (a path or the JSON itself), or GOOGLE_APPLICATION_CREDENTIALS,
or the metadata server when told to use it (`providers.google_credentials` has the order).
OAuth2 tokens are sent as bearer tokens; a key goes in `x-goog-api-key`. The project comes
from VERTEX_AI_PROJECT_ID, else the credentials file, else the metadata server (asked once,
on first use). The default base is `https://{region}-aiplatform.googleapis.com`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import aiohttp

from ferro_proxy.config import ConfigError, TimeoutConfig
from ferro_proxy.exchange import Exchange, Reply, Usage
from providers import google_credentials
from providers import translate_gemini as tg
from providers.base import ProviderSpec, ResolvedSettings, record_usage
from providers.gce_metadata import MetadataServer
from providers.gemini import GoogleGenAIProvider
from providers.registry import register_provider
from providers.token_cache import CachedToken

if TYPE_CHECKING:
    from ferro_proxy.gateway import Gateway

VERTEX_MODELS = (
    "gemini-2.5-pro",
    "gemini-2.5-flash",
    "gemini-2.5-flash-lite",
    "gemini-2.0-flash",
    "gemini-2.0-flash-lite",
    "text-embedding-005",
    "text-multilingual-embedding-002",
    "gemini-embedding-001",
    "imagen-3.0-generate-002",
    "imagen-4.0-generate-001",
)


class VertexAIProvider(GoogleGenAIProvider):
    default_models = VERTEX_MODELS

    def __init__(self, settings: ResolvedSettings, gateway: Gateway) -> None:
        super().__init__(settings, gateway)
        extra, env = settings.extra, settings.env
        self.project = extra.project or env.get("VERTEX_AI_PROJECT_ID") or ""
        self.region = extra.region or env.get("VERTEX_AI_REGION") or ""
        problems = []
        if not self.region:
            problems.append("providers.vertex-ai.region: set it or VERTEX_AI_REGION")
        self.auth_kind = "none"
        self.tokens: CachedToken | None = None
        self._metadata: MetadataServer | None = None
        try:
            creds = google_credentials.resolve(settings.name, extra, env, settings.api_key)
        except ValueError as exc:
            problems.append(f"providers.vertex-ai.{exc}")
        else:
            self.auth_kind, self.tokens, self._metadata = creds.kind, creds.tokens, creds.metadata
            self.project = self.project or creds.project_id or ""
        if not self.project and self._metadata is None:
            problems.append("providers.vertex-ai.project: set it or VERTEX_AI_PROJECT_ID")
        if problems:
            raise ConfigError(problems)
        host = (
            "aiplatform.googleapis.com"
            if self.region == "global"
            else f"{self.region}-aiplatform.googleapis.com"
        )
        self.base = settings.base_url.replace("{region}-aiplatform.googleapis.com", host).replace(
            "{region}", self.region
        )

    def model_url(self, model: str, method: str) -> str:
        return (
            f"{self.base}/projects/{self.project}/locations/{self.region}"
            f"/publishers/google/models/{model}:{method}"
        )

    async def send(self, ex: Exchange, body: dict[str, Any], timeout: TimeoutConfig | None = None) -> Reply:
        if not self.project and self._metadata is not None:
            self.project = await self._metadata.project_id(self.session)  # once: it never changes
        return await super().send(ex, body, timeout)

    async def auth_headers(self, ex: Exchange) -> dict[str, str]:
        if self.tokens is not None:
            return {"Authorization": "Bearer " + await self.tokens.get(self.session)}
        key = self.api_key_for(ex)
        return {"x-goog-api-key": key} if key else {}

    async def embeddings(self, ex: Exchange, body: dict[str, Any], timeout: aiohttp.ClientTimeout) -> Reply:
        model = tg.strip_model_prefix(str(body.get("model", "")))
        data = await self._post_json(
            ex, self.model_url(model, "predict"), tg.vertex_embed_request(body), timeout
        )
        vectors, tokens = tg.vertex_embed_vectors(data)
        record_usage(ex, Usage(prompt_tokens=tokens))
        return Reply(200, data=tg.embeddings_response(vectors, model, tokens, body.get("encoding_format")))

    def has_own_credentials(self) -> bool:
        return self.tokens is not None or super().has_own_credentials()

    def health(self) -> dict[str, Any]:
        return {
            "base_url_set": bool(self.base),
            "key_configured": bool(self.settings.api_key) or self.tokens is not None,
            "auth": self.auth_kind,
        }

    def start(self) -> None:
        if self.tokens is not None:
            self.tokens.prefetch(self.session)

    async def close(self) -> None:
        if self.tokens is not None:
            await self.tokens.close()
        await super().close()


class VertexSpec(ProviderSpec):
    """Enabled as before (region, project and a key or service account), or by an ambient
    credential the environment names (GOOGLE_APPLICATION_CREDENTIALS, the metadata server);
    judged from the variables alone, no I/O at start."""

    def enabled_by_env(self, env: Mapping[str, str]) -> bool:
        return super().enabled_by_env(env) or (
            bool(env.get("VERTEX_AI_REGION")) and google_credentials.enabled_by_env(env)
        )


register_provider(
    VertexSpec(
        name="vertex-ai",
        display="Google Vertex AI",
        factory=VertexAIProvider,
        default_base_url="https://{region}-aiplatform.googleapis.com",
        env_key="VERTEX_AI_API_KEY",
        env_base_url="VERTEX_AI_BASE_URL",
        env_required=("VERTEX_AI_PROJECT_ID", "VERTEX_AI_REGION"),
        env_enables=("VERTEX_AI_SERVICE_ACCOUNT_JSON",),
        version_segment="/v1",
        model_prefixes=(
            "gemini-",
            "imagen-",
            "text-embedding-0",
            "text-multilingual-embedding-",
            "gemini-embedding-",
        ),
        capabilities=frozenset({"chat", "stream", "tools", "vision", "embeddings", "images"}),
        hosts=("aiplatform.googleapis.com",),
    )
)
