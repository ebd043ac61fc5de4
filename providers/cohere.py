"""Cohere API v2 adapter: `/v2/chat` (JSON and SSE) and `/v2/embed`, bearer auth.

Cohere v2 messages are close to OpenAI's (system/user/assistant/tool roles, tool_calls with
JSON-string arguments, image_url parts); the differences translated here are the parameter
names (`p`, `stop_sequences`), `tool_choice` (REQUIRED/NONE), `response_format.json_schema`,
the response's content list, its finish reasons and `usage.billed_units`, and the stream's
typed events (message-start … message-end).
"""

from __future__ import annotations

import base64
import struct
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import orjson

from ferro_proxy.errors import GatewayError, bad_request
from ferro_proxy.exchange import Exchange, Reply, StreamChunk, Usage
from providers.base import (
    Provider,
    ProviderSpec,
    json_events,
    parse_json_body,
    read_body,
    read_error,
    record_usage,
    stream_broken,
    transport_error,
)
from providers.chat_shape import check_chat_shape
from providers.registry import register_provider

COHERE_MODELS = (
    "command-a-03-2025",
    "command-a-vision-07-2025",
    "command-r-plus-08-2024",
    "command-r-08-2024",
    "command-r7b-12-2024",
    "embed-v4.0",
    "embed-english-v3.0",
    "embed-multilingual-v3.0",
)
_FINISH = {
    "COMPLETE": "stop",
    "STOP_SEQUENCE": "stop",
    "MAX_TOKENS": "length",
    "ERROR_LIMIT": "length",
    "TOOL_CALL": "tool_calls",
    "ERROR_TOXIC": "content_filter",
}

# ------------------------------------------------------------------ request translation


def _content(content: Any) -> Any:
    """OpenAI content -> Cohere content: strings stay strings; text and image_url parts pass."""
    if content is None or isinstance(content, str):
        return content or ""
    if not isinstance(content, list):
        raise bad_request("message content must be a string or an array of parts", param="messages")
    parts = []
    for part in content:
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text":
            parts.append({"type": "text", "text": part.get("text", "")})
        elif kind == "image_url":
            image = part.get("image_url")
            url = image.get("url") if isinstance(image, dict) else image
            if not isinstance(url, str) or not url:
                raise bad_request("image_url part without a url", param="messages")
            parts.append({"type": "image_url", "image_url": {"url": url}})
        else:
            raise bad_request(f"unsupported content part type {kind!r} for Cohere", param="messages")
    return parts


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") == "text")
    return ""


def messages_to_cohere(messages: list[Any]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for msg in messages:
        if not isinstance(msg, dict):
            raise bad_request("each message must be an object", param="messages")
        role = msg.get("role")
        if role in ("system", "developer"):
            out.append({"role": "system", "content": _text(msg.get("content"))})
        elif role == "user":
            out.append({"role": "user", "content": _content(msg.get("content"))})
        elif role == "assistant":
            calls = msg.get("tool_calls")
            if calls:
                native: dict[str, Any] = {
                    "role": "assistant",
                    "tool_calls": [
                        {
                            "id": c.get("id", ""),
                            "type": "function",
                            "function": {
                                "name": (c.get("function") or {}).get("name", ""),
                                "arguments": (c.get("function") or {}).get("arguments") or "{}",
                            },
                        }
                        for c in calls
                    ],
                }
                text = _text(msg.get("content"))
                if text:  # Cohere carries the words before a tool call as the tool plan
                    native["tool_plan"] = text
                out.append(native)
            else:
                out.append({"role": "assistant", "content": _text(msg.get("content"))})
        elif role == "tool":
            out.append(
                {
                    "role": "tool",
                    "tool_call_id": msg.get("tool_call_id", ""),
                    "content": _text(msg.get("content")),
                }
            )
        else:
            raise bad_request(f"unsupported message role {role!r}", param="messages")
    return out


def chat_request(body: dict[str, Any]) -> dict[str, Any]:
    """An OpenAI chat body -> a Cohere v2 chat body."""
    messages = body.get("messages")
    if not isinstance(messages, list):
        raise bad_request("'messages' must be an array", param="messages")
    if body.get("n") not in (None, 1):
        raise bad_request("Cohere returns one choice per request; n must be 1", param="n")
    out: dict[str, Any] = {"model": body["model"], "messages": messages_to_cohere(messages)}
    max_tokens = body.get("max_completion_tokens") or body.get("max_tokens")
    if max_tokens:
        out["max_tokens"] = max_tokens
    for src, dst in (
        ("temperature", "temperature"),
        ("top_p", "p"),
        ("seed", "seed"),
        ("frequency_penalty", "frequency_penalty"),
        ("presence_penalty", "presence_penalty"),
    ):
        if body.get(src) is not None:
            out[dst] = body[src]
    stop = body.get("stop")
    if stop:
        out["stop_sequences"] = [stop] if isinstance(stop, str) else list(stop)
    fmt = body.get("response_format")
    if isinstance(fmt, dict) and fmt.get("type") in ("json_object", "json_schema"):
        native_fmt: dict[str, Any] = {"type": "json_object"}
        schema = (fmt.get("json_schema") or {}).get("schema") if fmt["type"] == "json_schema" else None
        if isinstance(schema, dict):
            native_fmt["json_schema"] = schema
        out["response_format"] = native_fmt
    tools = body.get("tools")
    if tools:
        choice = body.get("tool_choice")
        if isinstance(choice, dict) and isinstance(choice.get("function"), dict):
            # Cohere cannot name the tool to call: offer only that one, and require a call.
            wanted = choice["function"].get("name")
            tools = [t for t in tools if (t.get("function") or {}).get("name") == wanted]
            choice = "required"
        out["tools"] = [
            {
                "type": "function",
                "function": {k: v for k, v in (t.get("function") or {}).items() if k != "strict"},
            }
            for t in tools
        ]
        if choice == "required":
            out["tool_choice"] = "REQUIRED"
        elif choice == "none":
            out["tool_choice"] = "NONE"
    if body.get("stream"):
        out["stream"] = True
    return out


# ------------------------------------------------------------------ response translation


def usage_from_cohere(usage: Any) -> Usage | None:
    """Billed units are what Cohere charges for; raw token counts are the fallback."""
    if not isinstance(usage, dict):
        return None
    counts = usage.get("billed_units") or usage.get("tokens") or {}
    return Usage(
        prompt_tokens=int(counts.get("input_tokens") or 0),
        completion_tokens=int(counts.get("output_tokens") or 0),
        cached_tokens=int(usage.get("cached_tokens") or 0),
    )


def finish_reason(provider: str, reason: Any) -> str:
    if reason == "ERROR":
        raise GatewayError(
            502, f"{provider} stopped with an error while generating", code="upstream_error", type="api_error"
        )
    return _FINISH.get(str(reason), "stop")


def chat_response(provider: str, data: dict[str, Any], model: str) -> tuple[dict[str, Any], Usage | None]:
    native = data.get("message") or {}
    text = "".join(p.get("text", "") for p in native.get("content") or [] if p.get("type") == "text")
    calls = [
        {
            "id": c.get("id") or "call_" + uuid.uuid4().hex[:24],
            "type": "function",
            "function": {
                "name": (c.get("function") or {}).get("name", ""),
                "arguments": (c.get("function") or {}).get("arguments") or "{}",
            },
        }
        for c in native.get("tool_calls") or []
    ]
    message: dict[str, Any] = {"role": "assistant", "content": text if text or not calls else None}
    if calls:
        message["tool_calls"] = calls
    usage = usage_from_cohere(data.get("usage"))
    reason = "tool_calls" if calls else finish_reason(provider, data.get("finish_reason"))
    return {
        "id": "chatcmpl-" + str(data.get("id") or uuid.uuid4().hex),
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0, "message": message, "finish_reason": reason}],
        "usage": (usage or Usage()).to_openai(),
    }, usage


class CohereStreamTranslator:
    """Cohere v2 stream events -> chat.completion.chunk dicts, one event at a time."""

    __slots__ = ("provider", "id", "created", "model", "finished", "usage", "_tool_index", "_calls")

    def __init__(self, provider: str, model: str) -> None:
        self.provider = provider
        self.id = "chatcmpl-" + uuid.uuid4().hex
        self.created = int(time.time())
        self.model = model
        self.finished = False
        self.usage: Usage | None = None
        self._tool_index: dict[int, int] = {}
        self._calls = 0

    def _chunk(self, delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
        }

    def feed(self, event: dict[str, Any]) -> list[dict[str, Any]]:
        kind = event.get("type")
        message = ((event.get("delta") or {}).get("message")) or {}
        if kind == "message-start":
            if event.get("id"):
                self.id = "chatcmpl-" + str(event["id"])
            return [self._chunk({"role": "assistant", "content": ""})]
        if kind == "content-delta":
            text = (message.get("content") or {}).get("text")
            return [self._chunk({"content": text})] if text else []
        if kind == "tool-call-start":
            call = message.get("tool_calls") or {}
            index = self._calls
            self._calls += 1
            self._tool_index[int(event.get("index") or 0)] = index
            fn = call.get("function") or {}
            head = {
                "index": index,
                "id": call.get("id") or "call_" + uuid.uuid4().hex[:24],
                "type": "function",
                "function": {"name": fn.get("name", ""), "arguments": ""},
            }
            out = [self._chunk({"tool_calls": [head]})]
            if fn.get("arguments"):
                out.append(
                    self._chunk(
                        {"tool_calls": [{"index": index, "function": {"arguments": fn["arguments"]}}]}
                    )
                )
            return out
        if kind == "tool-call-delta":
            args = ((message.get("tool_calls") or {}).get("function") or {}).get("arguments")
            if not args:
                return []
            index = self._tool_index.get(int(event.get("index") or 0), max(0, self._calls - 1))
            return [self._chunk({"tool_calls": [{"index": index, "function": {"arguments": args}}]})]
        if kind == "message-end":
            delta = event.get("delta") or {}
            self.usage = usage_from_cohere(delta.get("usage"))
            reason = "tool_calls" if self._calls else finish_reason(self.provider, delta.get("finish_reason"))
            self.finished = True
            return [self._chunk({}, reason)]
        # content-start, content-end, tool-plan-delta, tool-call-end, citation events: nothing to say
        return []

    def usage_chunk(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "choices": [],
            "usage": (self.usage or Usage()).to_openai(),
        }


def embed_request(body: dict[str, Any]) -> dict[str, Any]:
    """An OpenAI embeddings body -> a Cohere v2 embed body (`input_type` may ride in extra_body)."""
    raw = body.get("input")
    texts = raw if isinstance(raw, list) else [raw]
    if not texts or not all(isinstance(t, str) and t for t in texts):
        raise bad_request("Cohere embeds text: input must be a string or an array of strings", param="input")
    out: dict[str, Any] = {
        "model": body["model"],
        "texts": texts,
        "input_type": body.get("input_type") or "search_document",
        "embedding_types": ["float"],
    }
    if body.get("dimensions"):
        out["output_dimension"] = body["dimensions"]
    return out


def _encode(values: list[float], encoding: Any) -> Any:
    if encoding == "base64":
        return base64.b64encode(struct.pack(f"<{len(values)}f", *values)).decode()
    return values


# ------------------------------------------------------------------ the adapter


class CohereProvider(Provider):
    default_models = tuple(COHERE_MODELS)

    def serves(self, model: str) -> bool:
        return super().serves(model) or model in COHERE_MODELS

    async def _post(
        self,
        ex: Exchange,
        path: str,
        payload: dict[str, Any],
        timeout: aiohttp.ClientTimeout,
        stream: bool = False,
    ) -> aiohttp.ClientResponse:
        headers = {
            "Content-Type": "application/json",
            "Accept": "text/event-stream" if stream else "application/json",
            **self.settings.headers,
        }
        key = self.api_key_for(ex)
        if key:
            headers["Authorization"] = f"Bearer {key}"
        try:
            resp = await self.session.post(
                self.settings.base_url + path, data=orjson.dumps(payload), headers=headers, timeout=timeout
            )
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            raise transport_error(self.name, exc) from None
        if resp.status >= 400:
            err = await read_error(self.name, resp)
            resp.release()
            raise err
        return resp

    async def _json(self, resp: aiohttp.ClientResponse) -> dict[str, Any]:
        return parse_json_body(self.name, await read_body(self.name, resp))

    async def chat(self, ex: Exchange, body: dict[str, Any], timeout: aiohttp.ClientTimeout) -> Reply:
        check_chat_shape(body)
        model = str(body.get("model", ""))
        payload = chat_request(body)
        if not body.get("stream"):
            data = await self._json(await self._post(ex, "/chat", payload, timeout))
            completion, usage = chat_response(self.name, data, model)
            record_usage(ex, usage)
            return Reply(200, data=completion)
        resp = await self._post(ex, "/chat", payload, timeout, stream=True)
        return Reply(200, stream=self._stream(ex, resp, CohereStreamTranslator(self.name, model)))

    async def _stream(
        self, ex: Exchange, resp: aiohttp.ClientResponse, translator: CohereStreamTranslator
    ) -> AsyncIterator[StreamChunk]:
        complete = False
        try:
            async for name, event in json_events(self.name, resp):
                if not isinstance(event, dict):
                    continue
                event.setdefault("type", name)
                for chunk in translator.feed(event):
                    yield StreamChunk.from_json(chunk)
                if translator.finished:
                    break
            if not translator.finished:
                raise GatewayError(
                    502,
                    f"{self.name} ended the stream without message-end",
                    code="upstream_stream_error",
                    type="api_error",
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
            else:
                resp.close()

    async def embeddings(self, ex: Exchange, body: dict[str, Any], timeout: aiohttp.ClientTimeout) -> Reply:
        data = await self._json(await self._post(ex, "/embed", embed_request(body), timeout))
        vectors = (data.get("embeddings") or {}).get("float") or []
        tokens = int(((data.get("meta") or {}).get("billed_units") or {}).get("input_tokens") or 0)
        record_usage(ex, Usage(prompt_tokens=tokens))
        encoding = body.get("encoding_format")
        return Reply(
            200,
            data={
                "object": "list",
                "model": body["model"],
                "data": [
                    {"object": "embedding", "index": i, "embedding": _encode(v, encoding)}
                    for i, v in enumerate(vectors)
                ],
                "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
            },
        )


register_provider(
    ProviderSpec(
        name="cohere",
        display="Cohere",
        factory=CohereProvider,
        default_base_url="https://api.cohere.com",
        env_key="COHERE_API_KEY",
        env_base_url="COHERE_BASE_URL",
        version_segment="/v2",
        model_prefixes=("command-", "c4ai-", "embed-english-", "embed-multilingual-", "embed-v"),
        capabilities=frozenset({"chat", "stream", "tools", "vision", "embeddings"}),
        hosts=("api.cohere.com", "api.cohere.ai"),
    )
)
