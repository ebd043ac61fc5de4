"""Anthropic's Messages API as a provider.

OpenAI-shaped requests are translated to `POST /v1/messages` (providers/translate_anthropic.py)
and the answer back, JSON or SSE event by event. Requests that came in through the Anthropic
Messages ingress (`ex.ingress == "anthropic"`) are forwarded natively instead: the client's
own body with the filters' changes carried over, and the native answer/stream passed back
untouched and marked `ex.metadata["native_reply"] = True` so the ingress does not translate
it again. Usage is recorded from the native answer in both cases.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import orjson

from ferro_proxy.errors import GatewayError
from ferro_proxy.exchange import Exchange, Reply, StreamChunk
from ferro_proxy.sse import SSESplitter, parse_event
from providers.base import (
    Provider,
    ProviderSpec,
    parse_json_body,
    parse_stream_json,
    read_body,
    read_error,
    record_usage,
    transport_error,
)
from providers.chat_shape import check_chat_shape
from providers.registry import register_provider
from providers.translate_anthropic import (
    NATIVE_OFF,
    NativeToOpenAIStream,
    carry_over,
    native_reply_to_openai,
    native_usage,
    openai_to_native_body,
    stream_error,
)

DEFAULT_VERSION = "2023-06-01"
NATIVE_KEY = "anthropic_native"  # ex.metadata: the client's Messages body (ingress)
NATIVE_REPLY = "native_reply"  # ex.metadata: the reply is already in Messages form
# Listed when neither config nor the model catalog names any Anthropic model.
DEFAULT_MODELS = (
    "claude-opus-4-1-20250805",
    "claude-opus-4-20250514",
    "claude-sonnet-4-20250514",
    "claude-3-7-sonnet-20250219",
    "claude-3-5-sonnet-20241022",
    "claude-3-5-haiku-20241022",
    "claude-3-haiku-20240307",
)
# Fields the count_tokens endpoint accepts (it rejects generation settings).
_COUNT_FIELDS = ("model", "messages", "system", "tools", "tool_choice", "thinking", "mcp_servers")


class AnthropicProvider(Provider):
    default_models = tuple(DEFAULT_MODELS)

    def request_headers(self, ex: Exchange) -> dict[str, str]:
        client = ex.headers if ex.headers is not None else {}
        version = client.get("anthropic-version") if ex.ingress == "anthropic" else None
        headers = {
            "Content-Type": "application/json",
            "Accept": "application/json",
            "anthropic-version": version or DEFAULT_VERSION,
        }
        beta = client.get("anthropic-beta")
        if beta:
            headers["anthropic-beta"] = beta
        headers.update(self.settings.headers)
        key = self.api_key_for(ex)
        if key:
            headers["x-api-key"] = key
        return headers

    async def _post(
        self, ex: Exchange, path: str, payload: dict[str, Any], timeout: aiohttp.ClientTimeout
    ) -> aiohttp.ClientResponse:
        try:
            resp = await self.session.post(
                self.settings.base_url + path,
                data=orjson.dumps(payload),
                headers=self.request_headers(ex),
                timeout=timeout,
            )
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            raise transport_error(self.name, exc) from None
        if resp.status >= 400:
            err = await read_error(self.name, resp)
            resp.release()
            if resp.status == 529:  # Anthropic's "overloaded": Messages clients tell it apart from a failure
                err.type = "overloaded_error"
            raise err
        return resp

    async def _read_json(self, resp: aiohttp.ClientResponse) -> tuple[bytes, dict[str, Any]]:
        raw = await read_body(self.name, resp)
        return raw, parse_json_body(self.name, raw)

    def _native_body(self, ex: Exchange, body: dict[str, Any]) -> dict[str, Any] | None:
        if ex.ingress != "anthropic" or ex.metadata.get(NATIVE_OFF):
            return None
        native = ex.metadata.get(NATIVE_KEY)
        return carry_over(native, body) if isinstance(native, dict) else None

    # ------------------------------------------------------------ chat

    async def chat(self, ex: Exchange, body: dict[str, Any], timeout: aiohttp.ClientTimeout) -> Reply:
        ex.metadata.pop(NATIVE_REPLY, None)
        native = self._native_body(ex, body)
        if native is not None:
            return await self._chat_native(ex, native, timeout)
        check_chat_shape(body)
        payload, json_tool = openai_to_native_body(body)
        resp = await self._post(ex, "/messages", payload, timeout)
        if payload.get("stream"):
            translator = NativeToOpenAIStream(str(payload.get("model")), json_tool)
            return Reply(200, stream=self._openai_stream(ex, resp, translator))
        _, data = await self._read_json(resp)
        record_usage(ex, native_usage(data.get("usage")))
        return Reply(200, data=native_reply_to_openai(data, json_tool))

    async def _chat_native(
        self, ex: Exchange, payload: dict[str, Any], timeout: aiohttp.ClientTimeout
    ) -> Reply:
        resp = await self._post(ex, "/messages", payload, timeout)
        if payload.get("stream"):
            return Reply(200, stream=self._native_stream(ex, resp))
        raw, data = await self._read_json(resp)
        record_usage(ex, native_usage(data.get("usage")))
        ex.metadata[NATIVE_REPLY] = True
        return Reply(200, raw=raw, data=data)

    async def count_tokens(self, ex: Exchange, body: dict[str, Any], timeout: aiohttp.ClientTimeout) -> Reply:
        """`/v1/messages/count_tokens`, forwarded natively (Messages ingress only)."""
        native = self._native_body(ex, body)
        if native is None:
            payload, _ = openai_to_native_body(body)
        else:
            payload = native
        payload = {k: v for k, v in payload.items() if k in _COUNT_FIELDS}
        raw, data = await self._read_json(await self._post(ex, "/messages/count_tokens", payload, timeout))
        ex.metadata[NATIVE_REPLY] = True
        return Reply(200, raw=raw, data=data)

    # ------------------------------------------------------------ streams

    async def _events(self, resp: aiohttp.ClientResponse) -> AsyncIterator[tuple[bytes, str | None, str]]:
        """(raw event, name, data) for each SSE event as it arrives."""
        splitter = SSESplitter()
        async for data in resp.content.iter_any():
            for event in splitter.feed(data):
                name, text = parse_event(event)
                yield event, name, text
        tail = splitter.flush()
        if tail is not None:
            name, text = parse_event(tail)
            yield tail, name, text

    def _parse(self, text: str) -> dict[str, Any]:
        data = parse_stream_json(self.name, text) if text else {}
        return data if isinstance(data, dict) else {}

    async def _openai_stream(
        self, ex: Exchange, resp: aiohttp.ClientResponse, translator: NativeToOpenAIStream
    ) -> AsyncIterator[StreamChunk]:
        try:
            async for _, name, text in self._events(resp):
                if name == "ping" or not text:
                    continue
                for chunk in translator.feed(name, self._parse(text)):
                    yield StreamChunk.from_json(chunk)
                if translator.finished:
                    break
            if not translator.finished:
                raise _ended_early(self.name)
            record_usage(ex, translator.usage)
            if ex.wants_usage_chunk:
                yield StreamChunk.from_json(translator.usage_chunk())
            yield StreamChunk.done()
        except (TimeoutError, aiohttp.ClientError, ConnectionError) as exc:
            raise _broken(self.name, exc) from None
        finally:
            _release(resp, translator.finished)

    async def _native_stream(self, ex: Exchange, resp: aiohttp.ClientResponse) -> AsyncIterator[StreamChunk]:
        """The upstream's events passed through as they are, tapped for usage."""
        usage: dict[str, Any] = {}
        finished = False
        try:
            async for raw, name, text in self._events(resp):
                if name in ("message_start", "message_delta", "error"):
                    data = self._parse(text)
                    if name == "error":
                        raise stream_error(data, self.name)
                    found = (
                        (data.get("message") or {}).get("usage")
                        if name == "message_start"
                        else data.get("usage")
                    )
                    if isinstance(found, dict):
                        usage.update({k: v for k, v in found.items() if v is not None})
                ex.metadata[NATIVE_REPLY] = True
                yield StreamChunk(raw, "event")
                if name == "message_stop":
                    finished = True
                    break
            if not finished:
                raise _ended_early(self.name)
        except (TimeoutError, aiohttp.ClientError, ConnectionError) as exc:
            raise _broken(self.name, exc) from None
        finally:
            if usage:
                record_usage(ex, native_usage(usage))
            _release(resp, finished)


def _ended_early(provider: str) -> GatewayError:
    return GatewayError(
        502, f"{provider} ended the stream early", code="upstream_stream_error", type="api_error"
    )


def _broken(provider: str, exc: BaseException) -> GatewayError:
    return GatewayError(
        504 if isinstance(exc, TimeoutError) else 502,
        f"{provider} stream broke: {type(exc).__name__}",
        code="upstream_stream_error",
        type="api_error",
    )


def _release(resp: aiohttp.ClientResponse, finished: bool) -> None:
    if finished:
        resp.release()
    else:  # unfinished: drop the connection so the upstream stops generating
        resp.close()


register_provider(
    ProviderSpec(
        name="anthropic",
        display="Anthropic",
        factory=AnthropicProvider,
        default_base_url="https://api.anthropic.com/v1",
        env_key="ANTHROPIC_API_KEY",
        env_base_url="ANTHROPIC_BASE_URL",
        version_segment="/v1",
        model_prefixes=("claude-",),
        capabilities=frozenset({"chat", "stream", "tools", "vision", "count_tokens"}),
        hosts=("api.anthropic.com",),
    )
)
