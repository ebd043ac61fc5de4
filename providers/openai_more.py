"""More OpenAI-compatible upstreams: OpenRouter, Cerebras, SambaNova, DeepInfra, Novita,
Moonshot (Kimi), Qwen (Alibaba DashScope compatible mode), NVIDIA NIM, Cloudflare Workers AI,
Databricks serving endpoints and Ollama Cloud.

They share `OpenAICompatProvider` (bytes passed through, usage tapped). What differs is how
each is enabled and where its base URL comes from:
- Qwen and NVIDIA NIM also take the key under the name their own SDKs use
  (`DASHSCOPE_API_KEY`, `NVIDIA_API_KEY`) when the gateway-style name is unset.
- Cloudflare's base is the account-scoped `{root}/accounts/{account_id}/ai/v1`; the
  `CLOUDFLARE_BASE_URL` override replaces the root (`https://api.cloudflare.com/client/v4`).
- Databricks' base is the workspace host (`DATABRICKS_HOST`) plus `/serving-endpoints`; a
  host with a path is used as given.
Without the extra variable neither can form a URL, so the environment does not enable them
(the registry logs which variable is missing); configured under `providers:` without it, the
config is refused.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import TYPE_CHECKING

from ferro_proxy.config import ConfigError
from providers.base import Provider, ResolvedSettings
from providers.openai_compat import OpenAICompatProvider, compatible_spec

if TYPE_CHECKING:
    from ferro_proxy.gateway import Gateway

_CHAT = frozenset({"chat", "stream", "tools"})


class CloudflareProvider(OpenAICompatProvider):
    """Workers AI's OpenAI-compatible endpoints, scoped to one account."""

    def __init__(self, settings: ResolvedSettings, gateway: Gateway) -> None:
        account = settings.extra.account_id or settings.env.get("CLOUDFLARE_ACCOUNT_ID")
        if not account:
            raise ConfigError(["providers.cloudflare.account_id: set it or CLOUDFLARE_ACCOUNT_ID"])
        base = f"{settings.base_url}/accounts/{account}/ai/v1"
        super().__init__(dataclasses.replace(settings, base_url=base), gateway)


class DatabricksProvider(OpenAICompatProvider):
    """Model Serving endpoints of one Databricks workspace; the model is the endpoint name."""

    def __init__(self, settings: ResolvedSettings, gateway: Gateway) -> None:
        if not (settings.extra.base_url or settings.env.get("DATABRICKS_HOST")):
            raise ConfigError(["providers.databricks.base_url: set it or DATABRICKS_HOST"])
        base = settings.base_url
        if "://" not in base:  # the Databricks CLI and SDKs accept a bare workspace host
            base = "https://" + base
        super().__init__(dataclasses.replace(settings, base_url=base), gateway)


def _key_fallback(alias: str) -> Callable[[ResolvedSettings, Gateway], Provider]:
    """A factory that takes the key from `alias` when neither config nor the main variable has one."""

    def build(settings: ResolvedSettings, gateway: Gateway) -> Provider:
        if not settings.api_key and settings.env.get(alias):
            settings = dataclasses.replace(settings, api_key=settings.env[alias])
        return OpenAICompatProvider(settings, gateway)

    return build


# OpenRouter ids are `vendor/model`: address them as `openrouter/<vendor>/<model>`. Its
# attribution headers (HTTP-Referer, X-Title) are sent only when set under `headers:`.
compatible_spec(
    "openrouter",
    "OpenRouter",
    "https://openrouter.ai/api/v1",
    (),
    _CHAT | {"vision", "completions"},
    ("openrouter.ai",),
)
compatible_spec("cerebras", "Cerebras", "https://api.cerebras.ai/v1", (), _CHAT | {"completions"}, ("api.cerebras.ai",))
compatible_spec(
    "sambanova",
    "SambaNova",
    "https://api.sambanova.ai/v1",
    (),
    _CHAT | {"vision", "embeddings"},
    ("api.sambanova.ai",),
)
compatible_spec(
    "deepinfra",
    "DeepInfra",
    "https://api.deepinfra.com/v1/openai",
    (),
    _CHAT | {"vision", "completions", "embeddings"},
    (),
)
compatible_spec("novita", "Novita AI", "https://api.novita.ai/v3/openai", (), _CHAT | {"completions"}, ())
compatible_spec(
    "moonshot",
    "Moonshot AI (Kimi)",
    "https://api.moonshot.ai/v1",
    ("kimi-", "moonshot-v1-"),
    _CHAT | {"vision"},
    ("api.moonshot.ai",),
)
compatible_spec(
    "qwen",
    "Qwen (Alibaba Cloud Model Studio)",
    "https://dashscope-intl.aliyuncs.com/compatible-mode/v1",
    (
        "qwen-max",
        "qwen-plus",
        "qwen-turbo",
        "qwen-flash",
        "qwen-long",
        "qwen-vl-",
        "qwen3-max",
        "qwen3-coder-plus",
        "qwen3-coder-flash",
        "qwq-plus",
    ),
    _CHAT | {"vision", "embeddings"},
    (),
    factory=_key_fallback("DASHSCOPE_API_KEY"),
    env_enables=("DASHSCOPE_API_KEY",),
)
compatible_spec(
    "nvidia-nim",
    "NVIDIA NIM",
    "https://integrate.api.nvidia.com/v1",
    ("nvidia/",),
    _CHAT | {"vision", "embeddings"},
    ("integrate.api.nvidia.com",),
    factory=_key_fallback("NVIDIA_API_KEY"),
    env_enables=("NVIDIA_API_KEY",),
)
compatible_spec(
    "cloudflare",
    "Cloudflare Workers AI",
    "https://api.cloudflare.com/client/v4",
    ("@cf/", "@hf/"),
    _CHAT | {"embeddings"},
    (),
    factory=CloudflareProvider,
    env_required=("CLOUDFLARE_ACCOUNT_ID",),
)
compatible_spec(
    "databricks",
    "Databricks Model Serving",
    "",
    ("databricks-",),
    _CHAT | {"vision", "completions", "embeddings"},
    (),
    factory=DatabricksProvider,
    env_key="DATABRICKS_TOKEN",
    env_base_url="DATABRICKS_HOST",
    env_required=("DATABRICKS_HOST",),
    version_segment="/serving-endpoints",
)
compatible_spec(
    "ollama-cloud",
    "Ollama Cloud",
    "https://ollama.com/v1",
    (),
    _CHAT | {"vision"},
    (),
    env_key="OLLAMA_API_KEY",
)
