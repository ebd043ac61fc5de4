"""AI21 Studio (Jamba): OpenAI-like chat at https://api.ai21.com/studio/v1/chat/completions.

Where Jamba differs from OpenAI, translated here:
- message `content` must be a string: text parts are joined; image parts are refused (400)
  because Jamba takes text only; `developer` messages are sent as `system`.
- only the documented parameters are sent (model, messages, tools, documents,
  response_format, max_tokens, temperature, top_p, stop, n, stream);
  `max_completion_tokens` becomes `max_tokens`, `stop` is always a list, a `json_schema`
  response format becomes JSON mode (`json_object`) since Jamba has no schema option.
- tool-call `arguments` may come back as a JSON object; they are re-encoded as the string
  OpenAI clients expect, in JSON answers and in stream chunks.
- the stream always carries usage on its last chunk; it is stripped unless the client
  asked for it (`stream_options.include_usage`).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import orjson

from ferro_proxy.errors import bad_request
from ferro_proxy.exchange import Exchange, Reply, StreamChunk
from providers.base import ProviderSpec
from providers.chat_shape import check_chat_shape
from providers.openai_compat import OpenAICompatProvider
from providers.registry import register_provider

_PARAMS = frozenset(
    {
        "model",
        "messages",
        "tools",
        "documents",
        "response_format",
        "max_tokens",
        "temperature",
        "top_p",
        "stop",
        "n",
        "stream",
    }
)
_FINISH = {"stop": "stop", "length": "length", "tool_calls": "tool_calls", "content_filter": "content_filter"}
DEFAULT_MODELS = ("jamba-large", "jamba-mini")


def _flatten(content: Any) -> str:
    if content is None or isinstance(content, str):
        return content or ""
    texts: list[str] = []
    for part in content:
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text":
            texts.append(str(part.get("text", "")))
        else:
            raise bad_request(f"ai21 (Jamba) accepts text only, not {kind!r} content parts", param="messages")
    return "\n".join(texts)


def to_ai21(body: dict[str, Any]) -> dict[str, Any]:
    """An OpenAI chat body as Jamba's."""
    native = {k: v for k, v in body.items() if k in _PARAMS}
    limit = body.get("max_completion_tokens")
    if limit is not None and "max_tokens" not in native:
        native["max_tokens"] = limit
    if isinstance(native.get("stop"), str):
        native["stop"] = [native["stop"]]
    fmt = native.get("response_format")
    if isinstance(fmt, dict) and fmt.get("type") == "json_schema":
        native["response_format"] = {"type": "json_object"}
    messages: list[dict[str, Any]] = []
    for message in body.get("messages") or []:
        out = dict(message)
        if out.get("role") == "developer":
            out["role"] = "system"
        out["content"] = _flatten(out.get("content"))
        out.pop("name", None)
        messages.append(out)
    native["messages"] = messages
    return native


def _fix_tool_calls(calls: Any) -> bool:
    changed = False
    for call in calls or []:
        fn = call.get("function") if isinstance(call, dict) else None
        if isinstance(fn, dict) and isinstance(fn.get("arguments"), dict | list):
            fn["arguments"] = orjson.dumps(fn["arguments"]).decode()
            changed = True
    return changed


def normalize_choices(data: dict[str, Any], key: str) -> bool:
    """Tool-call arguments as strings, finish_reason normalized. True when something changed."""
    changed = False
    for choice in data.get("choices") or []:
        part = choice.get(key) or {}
        changed |= _fix_tool_calls(part.get("tool_calls"))
        reason = choice.get("finish_reason")
        if reason is not None and _FINISH.get(reason, "stop") != reason:
            choice["finish_reason"] = _FINISH.get(reason, "stop")
            changed = True
    return changed


class AI21Provider(OpenAICompatProvider):
    default_models = tuple(DEFAULT_MODELS)

    async def _post(
        self, ex: Exchange, endpoint: str, body: dict[str, Any], timeout: aiohttp.ClientTimeout
    ) -> aiohttp.ClientResponse:
        check_chat_shape(body)
        return await super()._post(ex, endpoint, to_ai21(body), timeout)

    async def _json_reply(self, ex: Exchange, resp: aiohttp.ClientResponse) -> Reply:
        reply = await super()._json_reply(ex, resp)
        data = reply.peek_json()
        if isinstance(data, dict) and normalize_choices(data, "message"):
            reply.set_json(data)
        return reply

    async def _stream(
        self, ex: Exchange, resp: aiohttp.ClientResponse, drop_usage_chunk: bool
    ) -> AsyncIterator[StreamChunk]:
        async for chunk in super()._stream(ex, resp, drop_usage_chunk):
            if chunk.kind == "data" and (b'"tool_calls"' in chunk.raw or b'"finish_reason":"' in chunk.raw):
                data = chunk.json()
                if normalize_choices(data, "delta"):
                    chunk.set_json(data)
            yield chunk


register_provider(
    ProviderSpec(
        name="ai21",
        display="AI21 (Jamba)",
        factory=AI21Provider,
        default_base_url="https://api.ai21.com/studio/v1",
        env_key="AI21_API_KEY",
        env_base_url="AI21_BASE_URL",
        version_segment="/studio/v1",
        model_prefixes=("jamba-",),
        capabilities=frozenset({"chat", "stream", "tools"}),
        hosts=("api.ai21.com",),
    )
)
