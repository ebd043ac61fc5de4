"""Azure AI Foundry (Azure AI Model Inference API): OpenAI-style chat completions and
embeddings at `{endpoint}/models/chat/completions?api-version=...`, `api-key` header, or an
Entra ID bearer token (`providers.entra_auth`: client secret or AKS workload identity).

Differences from OpenAI handled here: `max_completion_tokens` is sent as `max_tokens`;
`stream_options` and `user` are not part of the API and are not sent (usage is read from
the stream when the endpoint reports it); any other parameter outside the documented set
is sent with `extra-parameters: pass-through` so model-specific options reach the model
instead of being refused.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

import aiohttp

from ferro_proxy.exchange import Exchange, Reply
from providers import entra_auth
from providers.base import ResolvedSettings, normalize_base_url
from providers.openai_compat import OpenAICompatProvider
from providers.registry import register_provider

if TYPE_CHECKING:
    from ferro_proxy.gateway import Gateway

DEFAULT_API_VERSION = "2024-05-01-preview"
_PATHS = {"chat": "/chat/completions", "embeddings": "/embeddings"}
_CHAT_PARAMS = frozenset(
    {
        "model",
        "messages",
        "frequency_penalty",
        "presence_penalty",
        "temperature",
        "top_p",
        "max_tokens",
        "response_format",
        "stop",
        "stream",
        "tools",
        "tool_choice",
        "seed",
        "modalities",
    }
)
_EMBED_PARAMS = frozenset({"model", "input", "dimensions", "encoding_format", "input_type"})
_NOT_SENT = ("stream_options", "user")
_EXTRA_FLAG = "azure_foundry_extra_parameters"
DEFAULT_MODELS = (
    "Phi-4",
    "Meta-Llama-3.1-70B-Instruct",
    "Mistral-Large-2411",
    "DeepSeek-R1",
    "Cohere-embed-v3-english",
)


class AzureFoundryProvider(OpenAICompatProvider):
    default_models = tuple(DEFAULT_MODELS)

    def __init__(self, settings: ResolvedSettings, gateway: Gateway) -> None:
        endpoint = settings.extra.endpoint or settings.env.get("AZURE_FOUNDRY_ENDPOINT") or ""
        # AZURE_FOUNDRY_BASE_URL (or base_url in the config) wins over the endpoint.
        explicit = settings.extra.base_url or settings.env.get("AZURE_FOUNDRY_BASE_URL")
        if not explicit:
            settings = dataclasses.replace(settings, base_url=normalize_base_url(endpoint, "/models"))
        super().__init__(settings, gateway)
        self.base_url = settings.base_url
        self.api_version = (
            settings.extra.api_version or settings.env.get("AZURE_FOUNDRY_API_VERSION") or DEFAULT_API_VERSION
        )
        self.entra = entra_auth.for_provider(settings)

    def url(self, endpoint: str, model: str) -> str:
        return f"{self.base_url}{_PATHS[endpoint]}?api-version={self.api_version}"

    def auth_headers(self, ex: Exchange) -> dict[str, str]:
        if self.entra is not None:
            return self.entra.headers()
        key = self.api_key_for(ex)
        return {"api-key": key} if key else {}

    def has_own_credentials(self) -> bool:
        return self.entra is not None or super().has_own_credentials()

    def start(self) -> None:
        if self.entra is not None:
            self.entra.start(self.session)

    def request_headers(self, ex: Exchange) -> dict[str, str]:
        headers = super().request_headers(ex)
        if ex.metadata.get(_EXTRA_FLAG):
            headers["extra-parameters"] = "pass-through"
        return headers

    async def _post(
        self, ex: Exchange, endpoint: str, body: dict[str, Any], timeout: aiohttp.ClientTimeout
    ) -> aiohttp.ClientResponse:
        native = {k: v for k, v in body.items() if k not in _NOT_SENT}
        if endpoint == "chat" and "max_completion_tokens" in native:
            limit = native.pop("max_completion_tokens")
            native.setdefault("max_tokens", limit)
        known = _CHAT_PARAMS if endpoint == "chat" else _EMBED_PARAMS
        ex.metadata[_EXTRA_FLAG] = any(k not in known for k in native)
        if self.entra is not None:  # auth_headers is synchronous: have the token first
            await self.entra.ensure(self.session)
        return await super()._post(ex, endpoint, native, timeout)

    async def passthrough(self, ex: Exchange, body: dict[str, Any], timeout: aiohttp.ClientTimeout) -> Reply:
        if self.entra is not None:
            await self.entra.ensure(self.session)
        return await super().passthrough(ex, body, timeout)

    def health(self) -> dict[str, Any]:
        return {
            "base_url_set": bool(self.base_url),
            "key_configured": bool(self.settings.api_key) or self.entra is not None,
            "auth": "entra" if self.entra is not None else "api_key",
        }

    async def close(self) -> None:
        if self.entra is not None:
            await self.entra.close()
        await super().close()


register_provider(
    entra_auth.EntraEnabledSpec(
        name="azure-foundry",
        display="Azure AI Foundry",
        factory=AzureFoundryProvider,
        default_base_url="",  # from AZURE_FOUNDRY_ENDPOINT (+ /models) unless a base URL is set
        env_key="AZURE_FOUNDRY_API_KEY",
        env_base_url="AZURE_FOUNDRY_BASE_URL",
        env_required=("AZURE_FOUNDRY_ENDPOINT",),
        version_segment="/models",
        model_prefixes=(
            "Phi-",
            "phi-",
            "Meta-Llama-",
            "Llama-",
            "Mistral-",
            "Ministral-",
            "Codestral-",
            "Cohere-",
            "DeepSeek-",
            "AI21-",
            "jais-",
            "MAI-DS-",
        ),
        capabilities=frozenset({"chat", "stream", "tools", "vision", "embeddings"}),
        hosts=(),
    )
)
