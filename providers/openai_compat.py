"""The OpenAI-compatible family: OpenAI itself and every upstream that speaks its API
(DeepSeek, Fireworks, Groq, Mistral, Perplexity, Together, xAI, Ollama, Azure OpenAI).

Hot path: the request body is serialized once; a non-streamed answer is returned as the
upstream's bytes (parsed once, for usage); a stream is passed through event by event as
bytes, tapped for usage. The gateway always asks upstream for the final usage chunk and
drops it again when the client did not ask for it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import aiohttp
import orjson

from ferro_proxy.errors import GatewayError
from ferro_proxy.exchange import Exchange, Reply, StreamChunk, Usage
from ferro_proxy.proxy_path import check_target, upstream_url
from ferro_proxy.sse import SSESplitter, classify
from providers import entra_auth
from providers.base import (
    Provider,
    ProviderSpec,
    ResolvedSettings,
    parse_json_body,
    read_body,
    read_error,
    record_usage,
    stream_broken,
    transport_error,
)
from providers.registry import register_provider

if TYPE_CHECKING:
    from ferro_proxy.gateway import Gateway

_PATHS = {
    "chat": "/chat/completions",
    "completions": "/completions",
    "embeddings": "/embeddings",
    "images": "/images/generations",
}
# Headers from the client worth forwarding upstream (never auth, never hop-by-hop).
_FORWARD_HEADERS = ("OpenAI-Organization", "OpenAI-Project", "OpenAI-Beta", "Idempotency-Key")
_HOP_BY_HOP = frozenset(
    h.lower()
    for h in (
        "Connection",
        "Keep-Alive",
        "Proxy-Authenticate",
        "Proxy-Authorization",
        "TE",
        "Trailer",
        "Transfer-Encoding",
        "Upgrade",
        "Content-Length",
        "Content-Encoding",
        "Host",
        "Authorization",
        "api-key",
        "x-api-key",
        "Cookie",
    )
)


class OpenAICompatProvider(Provider):
    """An upstream that speaks OpenAI's REST API."""

    def url(self, endpoint: str, model: str) -> str:
        return self.settings.base_url + _PATHS[endpoint]

    def auth_headers(self, ex: Exchange) -> dict[str, str]:
        key = self.api_key_for(ex)
        return {"Authorization": f"Bearer {key}"} if key else {}

    def request_headers(self, ex: Exchange) -> dict[str, str]:
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        for name in _FORWARD_HEADERS:
            value = ex.headers.get(name) if ex.headers is not None else None
            if value:
                headers[name] = value
        headers.update(self.settings.headers)
        headers.update(self.auth_headers(ex))
        return headers

    async def _post(
        self, ex: Exchange, endpoint: str, body: dict[str, Any], timeout: aiohttp.ClientTimeout
    ) -> aiohttp.ClientResponse:
        url = self.url(endpoint, str(body.get("model", "")))
        try:
            resp = await self.session.post(
                url, data=orjson.dumps(body), headers=self.request_headers(ex), timeout=timeout
            )
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            raise transport_error(self.name, exc) from None
        if resp.status >= 400:
            err = await read_error(self.name, resp)
            resp.release()
            raise err
        return resp

    async def _json_reply(self, ex: Exchange, resp: aiohttp.ClientResponse) -> Reply:
        raw = await read_body(self.name, resp)
        data = parse_json_body(self.name, raw, require_object=False)
        if isinstance(data, dict):
            record_usage(ex, Usage.from_openai(data.get("usage")))
        return Reply(resp.status, raw=raw, data=data)

    async def chat(self, ex: Exchange, body: dict[str, Any], timeout: aiohttp.ClientTimeout) -> Reply:
        return await self._generate(ex, "chat", body, timeout)

    async def completions(self, ex: Exchange, body: dict[str, Any], timeout: aiohttp.ClientTimeout) -> Reply:
        return await self._generate(ex, "completions", body, timeout)

    async def _generate(
        self, ex: Exchange, endpoint: str, body: dict[str, Any], timeout: aiohttp.ClientTimeout
    ) -> Reply:
        if not body.get("stream"):
            return await self._json_reply(ex, await self._post(ex, endpoint, body, timeout))
        client_wants_usage = ex.wants_usage_chunk
        if not client_wants_usage:
            opts = body.get("stream_options")
            body = {
                **body,
                "stream_options": {**(opts if isinstance(opts, dict) else {}), "include_usage": True},
            }
        resp = await self._post(ex, endpoint, body, timeout)
        return Reply(200, stream=self._stream(ex, resp, drop_usage_chunk=not client_wants_usage))

    async def _stream(
        self, ex: Exchange, resp: aiohttp.ClientResponse, drop_usage_chunk: bool
    ) -> AsyncIterator[StreamChunk]:
        splitter = SSESplitter()
        saw_done = False
        try:
            async for data in resp.content.iter_any():
                for event in splitter.feed(data):
                    chunk = classify(event)
                    if chunk.kind == "done":
                        saw_done = True
                    elif chunk.kind == "data":
                        if b'"usage"' in event:
                            parsed = chunk.json()
                            usage = Usage.from_openai(parsed.get("usage"))
                            if usage is not None:
                                record_usage(ex, usage)
                                if drop_usage_chunk and not parsed.get("choices"):
                                    continue
                                if drop_usage_chunk:  # usage rode on a content chunk: strip it
                                    parsed.pop("usage", None)
                                    chunk.set_json(parsed)
                        elif b'"error"' in event:
                            parsed = chunk.json()
                            if isinstance(parsed.get("error"), dict):
                                message = parsed["error"].get("message") or "upstream error"
                                raise GatewayError(
                                    502, f"{self.name}: {message}", code="upstream_stream_error"
                                )
                    yield chunk
            tail = splitter.flush()
            if tail is not None:
                chunk = classify(tail)
                saw_done = saw_done or chunk.kind == "done"
                yield chunk
            if not saw_done:
                raise GatewayError(
                    502, f"{self.name} ended the stream early", code="upstream_stream_error", type="api_error"
                )
        except (TimeoutError, aiohttp.ClientError, ConnectionError) as exc:
            raise stream_broken(self.name, exc) from None
        finally:
            if saw_done:
                resp.release()
            else:  # unfinished: drop the connection so the upstream stops generating
                resp.close()

    async def embeddings(self, ex: Exchange, body: dict[str, Any], timeout: aiohttp.ClientTimeout) -> Reply:
        return await self._json_reply(ex, await self._post(ex, "embeddings", body, timeout))

    async def images(self, ex: Exchange, body: dict[str, Any], timeout: aiohttp.ClientTimeout) -> Reply:
        return await self._json_reply(ex, await self._post(ex, "images", body, timeout))

    async def passthrough(self, ex: Exchange, body: dict[str, Any], timeout: aiohttp.ClientTimeout) -> Reply:
        """Any other `/v1/*` call: forwarded to this upstream's base URL, answered as bytes."""
        # ex.path and ex.query are decoded ("%23" is "#" there): forward the checked raw form
        sub_target = ex.native_path if ex.native_path is not None else check_target(quote(ex.path))
        url = upstream_url(self.settings.base_url, sub_target)
        headers = {
            k: v
            for k, v in ex.headers.items()
            if k.lower() not in _HOP_BY_HOP and not k.lower().startswith("x-ferro")
        }
        headers.update(self.settings.headers)
        headers.update(self.auth_headers(ex))
        payload = ex.raw_body if ex.body is None else orjson.dumps(body)
        try:
            resp = await self.session.request(
                ex.method, url, data=payload or None, headers=headers, timeout=timeout
            )
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            raise transport_error(self.name, exc) from None
        if resp.status >= 400:
            err = await read_error(self.name, resp)
            resp.release()
            raise err
        reply_headers = {
            k: v
            for k, v in resp.headers.items()
            if k.lower() not in _HOP_BY_HOP and k.lower() != "content-type"
        }
        reply = Reply(resp.status, stream=_raw_bytes(resp), headers=reply_headers)
        reply.content_type = resp.headers.get("Content-Type", "application/octet-stream")
        return reply


async def _raw_bytes(resp: aiohttp.ClientResponse) -> AsyncIterator[StreamChunk]:
    try:
        async for data in resp.content.iter_any():
            yield StreamChunk(data, "bytes")
    finally:
        resp.release()


class AzureOpenAIProvider(OpenAICompatProvider):
    """Azure OpenAI: deployment URLs, `api-key` header (or an Entra ID bearer token,
    `providers.entra_auth`), `api-version` query."""

    def __init__(self, settings: ResolvedSettings, gateway: Gateway) -> None:
        super().__init__(settings, gateway)
        self.entra = entra_auth.for_provider(settings)

    def url(self, endpoint: str, model: str) -> str:
        extra = self.settings.extra
        env = self.settings.env
        deployment = extra.deployment or env.get("AZURE_OPENAI_DEPLOYMENT") or model
        version = extra.api_version or env.get("AZURE_OPENAI_API_VERSION") or "2024-10-21"
        return f"{self.settings.base_url}/openai/deployments/{deployment}{_PATHS[endpoint]}?api-version={version}"

    def auth_headers(self, ex: Exchange) -> dict[str, str]:
        if self.entra is not None:
            return self.entra.headers()
        key = self.api_key_for(ex)
        return {"api-key": key} if key else {}

    async def _post(
        self, ex: Exchange, endpoint: str, body: dict[str, Any], timeout: aiohttp.ClientTimeout
    ) -> aiohttp.ClientResponse:
        if self.entra is not None:  # auth_headers is synchronous: have the token first
            await self.entra.ensure(self.session)
        return await super()._post(ex, endpoint, body, timeout)

    async def passthrough(self, ex: Exchange, body: dict[str, Any], timeout: aiohttp.ClientTimeout) -> Reply:
        if self.entra is not None:
            await self.entra.ensure(self.session)
        return await super().passthrough(ex, body, timeout)

    def has_own_credentials(self) -> bool:
        return self.entra is not None or super().has_own_credentials()

    def start(self) -> None:
        if self.entra is not None:
            self.entra.start(self.session)

    def health(self) -> dict[str, Any]:
        return {
            "base_url_set": bool(self.settings.base_url),
            "key_configured": bool(self.settings.api_key) or self.entra is not None,
            "auth": "entra" if self.entra is not None else "api_key",
        }

    async def close(self) -> None:
        if self.entra is not None:
            await self.entra.close()
        await super().close()

    def serves(self, model: str) -> bool:
        return True  # deployments carry arbitrary names


_ALL = frozenset({"chat", "stream", "tools", "vision", "completions", "embeddings", "images"})
_CHAT = frozenset({"chat", "stream", "tools"})


def compatible_spec(
    name: str,
    display: str,
    base: str,
    prefixes: tuple[str, ...],
    caps: frozenset[str],
    hosts: tuple[str, ...],
    factory: Callable[..., Provider] = OpenAICompatProvider,
    **kw: Any,
) -> ProviderSpec:
    env_name = name.upper().replace("-", "_")
    return register_provider(
        ProviderSpec(
            name=name,
            display=display,
            factory=factory,
            default_base_url=base,
            env_key=kw.pop("env_key", f"{env_name}_API_KEY"),
            env_base_url=kw.pop("env_base_url", f"{env_name}_BASE_URL"),
            model_prefixes=prefixes,
            capabilities=caps,
            hosts=hosts,
            **kw,
        )
    )


compatible_spec(
    "openai",
    "OpenAI",
    "https://api.openai.com/v1",
    (
        "gpt-",
        "o1",
        "o3",
        "o4",
        "chatgpt-",
        "text-embedding-",
        "dall-e-",
        "gpt-image-",
        "davinci",
        "babbage",
        "omni-",
    ),
    _ALL,
    ("api.openai.com",),
)
compatible_spec(
    "deepseek",
    "DeepSeek",
    "https://api.deepseek.com/v1",
    ("deepseek-",),
    _CHAT | {"completions"},
    ("api.deepseek.com",),
)
compatible_spec(
    "fireworks",
    "Fireworks",
    "https://api.fireworks.ai/inference/v1",
    ("accounts/fireworks/",),
    _CHAT | {"vision", "completions", "embeddings", "images"},
    ("api.fireworks.ai",),
)
compatible_spec("groq", "Groq", "https://api.groq.com/openai/v1", (), _CHAT | {"vision"}, ("api.groq.com",))
compatible_spec(
    "mistral",
    "Mistral",
    "https://api.mistral.ai/v1",
    ("mistral-", "open-mistral", "codestral-", "ministral-", "pixtral-", "magistral-", "devstral-"),
    _CHAT | {"vision", "embeddings"},
    ("api.mistral.ai",),
)
compatible_spec(
    "perplexity",
    "Perplexity",
    "https://api.perplexity.ai",
    ("sonar", "r1-1776"),
    frozenset({"chat", "stream"}),
    ("api.perplexity.ai",),
)
compatible_spec(
    "together",
    "Together AI",
    "https://api.together.xyz/v1",
    (),
    _CHAT | {"vision", "completions", "embeddings", "images"},
    ("api.together.xyz",),
)
compatible_spec("xai", "xAI", "https://api.x.ai/v1", ("grok-",), _CHAT | {"vision", "images"}, ("api.x.ai",))
compatible_spec(
    "ollama",
    "Ollama",
    "http://localhost:11434",
    (),
    _CHAT | {"vision", "completions", "embeddings"},
    (),
    env_key=None,
    env_base_url="OLLAMA_HOST",
    env_enables=("OLLAMA_HOST",),
    version_segment="/v1",
    open_models=True,
)
register_provider(
    entra_auth.EntraEnabledSpec(
        name="azure-openai",
        display="Azure OpenAI",
        factory=AzureOpenAIProvider,
        default_base_url="",
        env_key="AZURE_OPENAI_API_KEY",
        env_base_url="AZURE_OPENAI_ENDPOINT",
        env_required=("AZURE_OPENAI_ENDPOINT",),
        capabilities=_ALL,
    )
)
