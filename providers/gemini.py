"""Google Gemini API adapter (generativelanguage.googleapis.com), and the shared base that
the Vertex AI adapter (providers/vertex.py) builds on.

Chat: `models/{m}:generateContent`, streamed via `:streamGenerateContent?alt=sse` and
translated event by event. Embeddings: `:batchEmbedContents`. Images: Imagen `:predict`.
Auth: the `x-goog-api-key` header.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from typing import Any

import aiohttp
import orjson

from ferro_proxy.errors import GatewayError
from ferro_proxy.exchange import Exchange, Reply, StreamChunk, Usage
from providers import translate_gemini as tg
from providers.base import (
    Provider,
    ProviderSpec,
    json_events,
    parse_json_body,
    read_body,
    record_usage,
    stream_broken,
    transport_error,
    upstream_error,
)
from providers.chat_shape import check_chat_shape
from providers.registry import register_provider

GEMINI_MODELS = (
    "gemini-2.5-pro",
    "gemini-2.5-flash",
    "gemini-2.5-flash-lite",
    "gemini-2.0-flash",
    "gemini-2.0-flash-lite",
    "gemini-embedding-001",
    "text-embedding-004",
    "imagen-3.0-generate-002",
    "imagen-4.0-generate-001",
)


def google_error(provider: str, status: int, body: bytes, headers: Mapping[str, str] | None) -> GatewayError:
    """Google's `{"error": {"code": 400, "message", "status": "INVALID_ARGUMENT"}}` -> GatewayError.

    The symbolic `status` is the useful code, not the numeric `code` that repeats the HTTP status.
    An invalid API key comes as a 400 with reason API_KEY_INVALID: the gateway's credential is
    at fault, not the client's request, so it is reported like a 401.
    """
    try:
        data = orjson.loads(body) if body else None
    except orjson.JSONDecodeError:
        data = None
    if isinstance(data, list) and data:
        data = data[0]
    err = data.get("error") if isinstance(data, dict) else None
    if isinstance(err, dict) and err.get("message"):
        reasons = {d.get("reason") for d in err.get("details") or [] if isinstance(d, dict)}
        if "API_KEY_INVALID" in reasons:
            status = 401
        body = orjson.dumps({"error": {"message": err["message"], "code": err.get("status") or None}})
    return upstream_error(provider, status, body, headers)


class GoogleGenAIProvider(Provider):
    """Common plumbing for the Gemini API and Vertex AI: same bodies, different URLs and auth."""

    default_models: tuple[str, ...] = ()

    def model_url(self, model: str, method: str) -> str:
        raise NotImplementedError

    async def auth_headers(self, ex: Exchange) -> dict[str, str]:
        raise NotImplementedError

    # ------------------------------------------------------------ plumbing

    def serves(self, model: str) -> bool:
        return super().serves(model) or tg.strip_model_prefix(model) in self.default_models

    async def _post(
        self, ex: Exchange, url: str, payload: dict[str, Any], timeout: aiohttp.ClientTimeout
    ) -> aiohttp.ClientResponse:
        headers = {"Content-Type": "application/json", **self.settings.headers, **await self.auth_headers(ex)}
        try:
            resp = await self.session.post(url, data=orjson.dumps(payload), headers=headers, timeout=timeout)
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            raise transport_error(self.name, exc) from None
        if resp.status >= 400:
            try:
                body = await resp.read()
            except (TimeoutError, aiohttp.ClientError):
                body = b""
            finally:
                resp.release()
            raise google_error(self.name, resp.status, body, resp.headers)
        return resp

    async def _post_json(
        self, ex: Exchange, url: str, payload: dict[str, Any], timeout: aiohttp.ClientTimeout
    ) -> dict[str, Any]:
        resp = await self._post(ex, url, payload, timeout)
        return parse_json_body(self.name, await read_body(self.name, resp))

    # ------------------------------------------------------------ chat

    async def chat(self, ex: Exchange, body: dict[str, Any], timeout: aiohttp.ClientTimeout) -> Reply:
        check_chat_shape(body)
        model = tg.strip_model_prefix(str(body.get("model", "")))
        payload = tg.chat_request(body)
        if not body.get("stream"):
            data = await self._post_json(ex, self.model_url(model, "generateContent"), payload, timeout)
            completion, usage = tg.chat_response(data, model)
            record_usage(ex, usage)
            return Reply(200, data=completion)
        url = self.model_url(model, "streamGenerateContent") + "?alt=sse"
        resp = await self._post(ex, url, payload, timeout)
        return Reply(200, stream=self._stream(ex, resp, tg.GeminiStreamTranslator(model)))

    async def _stream(
        self, ex: Exchange, resp: aiohttp.ClientResponse, translator: tg.GeminiStreamTranslator
    ) -> AsyncIterator[StreamChunk]:
        complete = False
        try:
            async for _, event in json_events(self.name, resp):
                if isinstance(event, dict) and isinstance(event.get("error"), dict):
                    err = event["error"]
                    raise GatewayError(
                        502,
                        f"{self.name}: {err.get('message') or 'stream error'}",
                        code="upstream_stream_error",
                        type="api_error",
                    )
                for chunk in translator.feed(event if isinstance(event, dict) else {}):
                    yield StreamChunk.from_json(chunk)
            if not translator.finished:
                raise GatewayError(
                    502, f"{self.name} ended the stream early", code="upstream_stream_error", type="api_error"
                )
            complete = True
            record_usage(ex, translator.usage)
            if ex.wants_usage_chunk:
                yield StreamChunk.from_json(translator.usage_chunk())
            yield StreamChunk.done()
        except (TimeoutError, aiohttp.ClientError, ConnectionError) as exc:
            raise stream_broken(self.name, exc) from None
        finally:
            if complete:
                resp.release()
            else:  # unfinished: drop the connection so the upstream stops generating
                resp.close()

    # ------------------------------------------------------------ images

    async def images(self, ex: Exchange, body: dict[str, Any], timeout: aiohttp.ClientTimeout) -> Reply:
        model = tg.strip_model_prefix(str(body.get("model") or "imagen-3.0-generate-002"))
        data = await self._post_json(ex, self.model_url(model, "predict"), tg.imagen_request(body), timeout)
        result = tg.imagen_response(data)
        if not result["data"]:
            raise GatewayError(
                400,
                f"{self.name}: no image was returned (the prompt or the images were filtered)",
                code="content_filter",
                retryable=False,
            )
        return Reply(200, data=result)


class GeminiProvider(GoogleGenAIProvider):
    """The Gemini API: `{base}/models/{model}:{method}` with `x-goog-api-key`."""

    default_models = GEMINI_MODELS

    def model_url(self, model: str, method: str) -> str:
        return f"{self.settings.base_url}/models/{model}:{method}"

    async def auth_headers(self, ex: Exchange) -> dict[str, str]:
        key = self.api_key_for(ex)
        return {"x-goog-api-key": key} if key else {}

    async def embeddings(self, ex: Exchange, body: dict[str, Any], timeout: aiohttp.ClientTimeout) -> Reply:
        model = tg.strip_model_prefix(str(body.get("model", "")))
        payload = tg.batch_embed_request(model, body)
        data = await self._post_json(ex, self.model_url(model, "batchEmbedContents"), payload, timeout)
        vectors, tokens = tg.batch_embed_vectors(data)
        record_usage(ex, Usage(prompt_tokens=tokens))
        return Reply(200, data=tg.embeddings_response(vectors, model, tokens, body.get("encoding_format")))


register_provider(
    ProviderSpec(
        name="gemini",
        display="Google Gemini",
        factory=GeminiProvider,
        default_base_url="https://generativelanguage.googleapis.com",
        env_key="GEMINI_API_KEY",
        env_base_url="GEMINI_BASE_URL",
        version_segment="/v1beta",
        model_prefixes=("gemini-", "gemma-", "imagen-", "text-embedding-004", "gemini-embedding-"),
        capabilities=frozenset({"chat", "stream", "tools", "vision", "embeddings", "images"}),
        hosts=("generativelanguage.googleapis.com",),
    )
)
