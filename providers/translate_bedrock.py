"""OpenAI chat/embeddings/images bodies ⇄ Bedrock Converse, ConverseStream and InvokeModel.

Pure functions (no I/O): image URLs that need downloading are listed by `remote_image_urls`
and handed back to `to_converse` already fetched, so other parts can reuse the translation.

Notes on the mapping:
- system/developer messages become the top-level `system` blocks; consecutive messages of
  the same role are merged (Converse wants user/assistant turns to alternate); tool results
  become `toolResult` blocks in a user turn.
- `response_format` (json_object / json_schema) becomes a forced tool whose input schema is
  the requested schema; its input is returned as the message content (Converse has no JSON
  mode of its own).
- usage: Bedrock's `inputTokens` excludes cache reads/writes, OpenAI's `prompt_tokens`
  includes them, so prompt_tokens = input + cacheRead + cacheWrite; cached = cacheRead.
"""

from __future__ import annotations

import base64
import re
import struct
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson

from ferro_proxy.errors import GatewayError, bad_request
from ferro_proxy.exchange import Usage

JSON_TOOL = "json_response"
IMAGE_FORMATS = {"png": "png", "jpeg": "jpeg", "jpg": "jpeg", "gif": "gif", "webp": "webp"}
_FINISH = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "tool_use": "tool_calls",
    "guardrail_intervened": "content_filter",
    "content_filtered": "content_filter",
}
_METADATA_VALUE = re.compile(r"^[a-zA-Z0-9\s:_@$#=/+,\-.]{1,256}$")


def finish_reason(stop_reason: str | None) -> str:
    return _FINISH.get(stop_reason or "", "stop")


def usage_from_converse(usage: Mapping[str, Any] | None) -> Usage:
    usage = usage or {}
    cache_read = int(usage.get("cacheReadInputTokens") or 0)
    cache_write = int(usage.get("cacheWriteInputTokens") or 0)
    return Usage(
        prompt_tokens=int(usage.get("inputTokens") or 0) + cache_read + cache_write,
        completion_tokens=int(usage.get("outputTokens") or 0),
        cached_tokens=cache_read,
    )


# ------------------------------------------------------------------ images


def image_format(mime: str | None, data: bytes = b"") -> str | None:
    """Converse image format from a MIME type, else from the file's magic bytes."""
    if mime:
        fmt = IMAGE_FORMATS.get(mime.split(";")[0].strip().lower().removeprefix("image/"))
        if fmt:
            return fmt
    if data.startswith(b"\x89PNG"):
        return "png"
    if data.startswith(b"\xff\xd8"):
        return "jpeg"
    if data.startswith(b"GIF8"):
        return "gif"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    return None


def parse_data_url(url: str) -> tuple[str, str]:
    """(format, base64 data) of a `data:image/...;base64,` URL."""
    header, _, data = url.partition(",")
    if not header.startswith("data:") or ";base64" not in header or not data:
        raise bad_request("image_url data URLs must be base64 (data:image/png;base64,...)", param="messages")
    fmt = image_format(header[5:].split(";")[0])
    if fmt is None:
        raise bad_request(
            f"bedrock accepts png, jpeg, gif or webp images, not {header[5:].split(';')[0]!r}",
            param="messages",
        )
    return fmt, data


def _image_url(part: Mapping[str, Any]) -> str:
    image = part.get("image_url")
    url = image.get("url") if isinstance(image, dict) else image
    if not isinstance(url, str) or not url:
        raise bad_request("image_url part without a url", param="messages")
    return url


def remote_image_urls(messages: list[Any]) -> list[str]:
    """Non-data image URLs in the messages: Converse takes bytes only, so they are fetched
    (the fetcher decides which schemes and hosts it will reach)."""
    urls: list[str] = []
    for message in messages:
        content = message.get("content") if isinstance(message, dict) else None
        if not isinstance(content, list):
            continue
        for part in content:
            if isinstance(part, dict) and part.get("type") == "image_url":
                url = _image_url(part)
                if not url.startswith("data:") and url not in urls:
                    urls.append(url)
    return urls


# ------------------------------------------------------------------ request


def _text_of(content: Any) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(
            str(p.get("text", "")) for p in content if isinstance(p, dict) and p.get("type") == "text"
        )
    return str(content)


def _user_blocks(content: Any, fetched: Mapping[str, tuple[str, str]]) -> list[dict[str, Any]]:
    if isinstance(content, str):
        return [{"text": content}] if content else []
    blocks: list[dict[str, Any]] = []
    for part in content or []:
        if not isinstance(part, dict):
            continue
        kind = part.get("type")
        if kind == "text":
            if part.get("text"):
                blocks.append({"text": part["text"]})
        elif kind == "image_url":
            url = _image_url(part)
            if url.startswith("data:"):
                fmt, data = parse_data_url(url)
            elif url in fetched:
                fmt, data = fetched[url]
            else:
                raise bad_request(f"image URL could not be used: {url[:100]}", param="messages")
            blocks.append({"image": {"format": fmt, "source": {"bytes": data}}})
        else:
            raise bad_request(f"bedrock does not accept {kind!r} content parts", param="messages")
    return blocks


def _tool_arguments(raw: Any) -> Any:
    if isinstance(raw, dict):
        return raw
    if not raw:
        return {}
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise bad_request("tool_calls[].function.arguments must be JSON", param="messages") from None


def _tool_config(body: Mapping[str, Any], has_tool_history: bool) -> tuple[dict[str, Any] | None, str | None]:
    tools: list[dict[str, Any]] = []
    for tool in body.get("tools") or []:
        fn = tool.get("function") if isinstance(tool, dict) else None
        if not isinstance(fn, dict) or not fn.get("name"):
            raise bad_request(
                "tools[] entries must be {type: function, function: {name, ...}}", param="tools"
            )
        spec: dict[str, Any] = {
            "name": fn["name"],
            "inputSchema": {"json": fn.get("parameters") or {"type": "object", "properties": {}}},
        }
        if fn.get("description"):
            spec["description"] = fn["description"]
        tools.append({"toolSpec": spec})
    choice: dict[str, Any] | None = None
    tc = body.get("tool_choice")
    if tc == "required":
        choice = {"any": {}}
    elif isinstance(tc, dict) and isinstance(tc.get("function"), dict):
        choice = {"tool": {"name": tc["function"].get("name")}}
    elif tc == "none" and not has_tool_history:
        tools = []
    json_tool: str | None = None
    fmt = body.get("response_format")
    if isinstance(fmt, dict) and fmt.get("type") in ("json_object", "json_schema"):
        schema: Any = {"type": "object"}
        json_tool = JSON_TOOL
        if fmt["type"] == "json_schema":
            spec_in = fmt.get("json_schema") or {}
            schema = spec_in.get("schema") or schema
            json_tool = str(spec_in.get("name") or JSON_TOOL)
        tools.append(
            {
                "toolSpec": {
                    "name": json_tool,
                    "description": "Answer by calling this tool; its input is the JSON reply.",
                    "inputSchema": {"json": schema},
                }
            }
        )
        choice = {"tool": {"name": json_tool}}
    if not tools:
        return None, None
    config: dict[str, Any] = {"tools": tools}
    if choice is not None:
        config["toolChoice"] = choice
    return config, json_tool


def to_converse(
    body: Mapping[str, Any], fetched: Mapping[str, tuple[str, str]] | None = None
) -> tuple[dict[str, Any], str | None]:
    """(Converse request body, name of the tool standing in for response_format or None)."""
    fetched = fetched or {}
    if (body.get("n") or 1) != 1:
        raise bad_request("bedrock returns one choice per request (n must be 1)", param="n")
    system: list[dict[str, Any]] = []
    turns: list[dict[str, Any]] = []
    has_tool_history = False

    def add(role: str, blocks: list[dict[str, Any]]) -> None:
        if not blocks:
            return
        if turns and turns[-1]["role"] == role:
            turns[-1]["content"].extend(blocks)
        else:
            turns.append({"role": role, "content": blocks})

    for message in body.get("messages") or []:
        if not isinstance(message, dict):
            raise bad_request("messages[] entries must be objects", param="messages")
        role = message.get("role")
        content = message.get("content")
        if role in ("system", "developer"):
            text = _text_of(content)
            if text:
                system.append({"text": text})
        elif role == "user":
            add("user", _user_blocks(content, fetched))
        elif role == "assistant":
            blocks: list[dict[str, Any]] = []
            text = _text_of(content)
            if text.strip():
                blocks.append({"text": text})
            for call in message.get("tool_calls") or []:
                fn = call.get("function") or {}
                blocks.append(
                    {
                        "toolUse": {
                            "toolUseId": call.get("id"),
                            "name": fn.get("name"),
                            "input": _tool_arguments(fn.get("arguments")),
                        }
                    }
                )
                has_tool_history = True
            add("assistant", blocks)
        elif role == "tool":
            has_tool_history = True
            result_text = _text_of(content)
            add(
                "user",
                [
                    {
                        "toolResult": {
                            "toolUseId": message.get("tool_call_id"),
                            "content": [{"text": result_text or "(empty)"}],
                        }
                    }
                ],
            )
        else:
            raise bad_request(f"unsupported message role {role!r}", param="messages")

    native: dict[str, Any] = {"messages": turns}
    if system:
        native["system"] = system
    inference: dict[str, Any] = {}
    max_tokens = body.get("max_completion_tokens") or body.get("max_tokens")
    if max_tokens:
        inference["maxTokens"] = int(max_tokens)
    if body.get("temperature") is not None:
        inference["temperature"] = body["temperature"]
    if body.get("top_p") is not None:
        inference["topP"] = body["top_p"]
    stop = body.get("stop")
    if stop:
        inference["stopSequences"] = [stop] if isinstance(stop, str) else list(stop)
    if inference:
        native["inferenceConfig"] = inference
    tool_config, json_tool = _tool_config(body, has_tool_history)
    if tool_config is not None:
        native["toolConfig"] = tool_config
    user = body.get("user")
    if isinstance(user, str) and _METADATA_VALUE.match(user):
        native["requestMetadata"] = {"user": user}
    return native, json_tool


# ------------------------------------------------------------------ response


def new_id(request_id: str | None = None) -> str:
    return "chatcmpl-" + (request_id or uuid.uuid4().hex)


def from_converse(
    data: Mapping[str, Any], model: str, json_tool: str | None, request_id: str | None = None
) -> dict[str, Any]:
    """A Converse response as an OpenAI chat.completion."""
    message = (data.get("output") or {}).get("message") or {}
    texts: list[str] = []
    reasoning: list[str] = []
    tool_calls: list[dict[str, Any]] = []
    json_reply: str | None = None
    for block in message.get("content") or []:
        if "text" in block:
            texts.append(block["text"])
        elif "toolUse" in block:
            use = block["toolUse"]
            arguments = orjson.dumps(use.get("input") or {}).decode()
            if json_tool is not None and use.get("name") == json_tool:
                json_reply = arguments
                continue
            tool_calls.append(
                {
                    "id": use.get("toolUseId"),
                    "type": "function",
                    "function": {"name": use.get("name"), "arguments": arguments},
                }
            )
        elif "reasoningContent" in block:
            text = ((block["reasoningContent"] or {}).get("reasoningText") or {}).get("text")
            if text:
                reasoning.append(text)
    finish = finish_reason(data.get("stopReason"))
    if json_reply is not None:
        texts = [json_reply]
        if not tool_calls:
            finish = "stop" if finish == "tool_calls" else finish
    out_message: dict[str, Any] = {
        "role": "assistant",
        "content": "".join(texts) if texts or not tool_calls else None,
    }
    if tool_calls:
        out_message["tool_calls"] = tool_calls
    if reasoning:
        out_message["reasoning_content"] = "".join(reasoning)
    usage = usage_from_converse(data.get("usage"))
    return {
        "id": new_id(request_id),
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0, "message": out_message, "finish_reason": finish}],
        "usage": usage.to_openai(),
    }


@dataclass
class ConverseStreamTranslator:
    """ConverseStream events in, OpenAI chat.completion.chunk dicts out, one event at a time."""

    model: str
    json_tool: str | None = None
    id: str = field(default_factory=new_id)
    created: int = field(default_factory=lambda: int(time.time()))
    usage: Usage | None = None
    stopped: bool = False
    _tools: dict[int, int] = field(default_factory=dict)  # contentBlockIndex -> tool_calls index
    _json_blocks: set[int] = field(default_factory=set)
    _started: bool = False

    def chunk(self, delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
        }

    def usage_chunk(self) -> dict[str, Any]:
        usage = self.usage or Usage()
        return {
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "choices": [],
            "usage": usage.to_openai(),
        }

    def _role(self) -> list[dict[str, Any]]:
        if self._started:
            return []
        self._started = True
        return [self.chunk({"role": "assistant", "content": ""})]

    def on_event(self, event: str | None, data: Mapping[str, Any]) -> list[dict[str, Any]]:
        if event == "messageStart":
            return self._role()
        if event == "contentBlockStart":
            start = (data.get("start") or {}).get("toolUse")
            if not start:
                return []
            block = int(data.get("contentBlockIndex") or 0)
            if self.json_tool is not None and start.get("name") == self.json_tool:
                self._json_blocks.add(block)
                return self._role()
            index = len(self._tools)
            self._tools[block] = index
            call = {
                "index": index,
                "id": start.get("toolUseId"),
                "type": "function",
                "function": {"name": start.get("name"), "arguments": ""},
            }
            return [*self._role(), self.chunk({"tool_calls": [call]})]
        if event == "contentBlockDelta":
            block = int(data.get("contentBlockIndex") or 0)
            delta = data.get("delta") or {}
            out = self._role()
            if "text" in delta:
                out.append(self.chunk({"content": delta["text"]}))
            elif "toolUse" in delta:
                piece = (delta["toolUse"] or {}).get("input") or ""
                if block in self._json_blocks:
                    out.append(self.chunk({"content": piece}))
                elif block in self._tools:
                    out.append(
                        self.chunk(
                            {"tool_calls": [{"index": self._tools[block], "function": {"arguments": piece}}]}
                        )
                    )
            elif "reasoningContent" in delta:
                text = (delta["reasoningContent"] or {}).get("text")
                if text:
                    out.append(self.chunk({"reasoning_content": text}))
            return out
        if event == "messageStop":
            self.stopped = True
            finish = finish_reason(data.get("stopReason"))
            if finish == "tool_calls" and self._json_blocks and not self._tools:
                finish = "stop"
            return [*self._role(), self.chunk({}, finish)]
        if event == "metadata":
            self.usage = usage_from_converse(data.get("usage"))
        return []


# ------------------------------------------------------------------ stream exceptions

_EXCEPTION_STATUS = {
    "throttlingException": 429,
    "validationException": 400,
    "serviceUnavailableException": 503,
    "internalServerException": 500,
    "modelStreamErrorException": 500,
}


def stream_exception(provider: str, exception_type: str | None, payload: bytes) -> GatewayError:
    """An `:message-type exception` event as the error the client sees."""
    try:
        message = str((orjson.loads(payload) or {}).get("message") or "")
    except (orjson.JSONDecodeError, AttributeError):
        message = ""
    kind = exception_type or "exception"
    status = _EXCEPTION_STATUS.get(kind, 500)
    text = f"{provider}: {kind}: {message or 'stream failed'}"
    if status == 429:
        return GatewayError(429, text, code="rate_limit_exceeded", provider=provider)
    if status == 400:
        return GatewayError(400, text, code=kind, retryable=False, provider=provider)
    return GatewayError(502, text, code="upstream_stream_error", type="api_error", provider=provider)


# ------------------------------------------------------------------ embeddings


def embedding_family(model: str) -> str | None:
    if "titan-embed" in model:
        return "titan"
    if "cohere.embed" in model:
        return "cohere"
    return None


def embedding_inputs(body: Mapping[str, Any]) -> list[str]:
    raw = body.get("input")
    items = raw if isinstance(raw, list) else [raw]
    if not items or not all(isinstance(i, str) and i for i in items):
        raise bad_request("bedrock embeddings take a non-empty string or list of strings", param="input")
    return items


def titan_embed_body(text: str, body: Mapping[str, Any]) -> dict[str, Any]:
    native: dict[str, Any] = {"inputText": text}
    if body.get("dimensions"):
        native["dimensions"] = int(body["dimensions"])
    return native


def cohere_embed_body(texts: list[str], body: Mapping[str, Any]) -> dict[str, Any]:
    # Cohere v3 requires input_type; OpenAI has none, so documents unless the client says.
    return {"texts": texts, "input_type": body.get("input_type") or "search_document"}


def cohere_vectors(data: Mapping[str, Any]) -> list[list[float]]:
    vectors = data.get("embeddings")
    if isinstance(vectors, dict):  # answer shape when embedding_types was given
        vectors = vectors.get("float")
    if not isinstance(vectors, list):
        raise GatewayError(
            502, "bedrock sent an embeddings answer without vectors", code="upstream_bad_response"
        )
    return vectors


def encode_vector(vector: list[float], encoding_format: str | None) -> list[float] | str:
    if encoding_format == "base64":
        return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()
    return vector


def embeddings_response(
    model: str, vectors: list[list[float]], prompt_tokens: int, encoding_format: str | None
) -> dict[str, Any]:
    return {
        "object": "list",
        "model": model,
        "data": [
            {"object": "embedding", "index": i, "embedding": encode_vector(v, encoding_format)}
            for i, v in enumerate(vectors)
        ],
        "usage": {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens},
    }


# ------------------------------------------------------------------ images


def image_family(model: str) -> str | None:
    if "titan-image-generator" in model or "nova-canvas" in model:
        return "titan"
    return None


def titan_image_body(body: Mapping[str, Any]) -> dict[str, Any]:
    prompt = body.get("prompt")
    if not isinstance(prompt, str) or not prompt:
        raise bad_request("prompt is required", param="prompt")
    config: dict[str, Any] = {"numberOfImages": int(body.get("n") or 1)}
    size = body.get("size")
    if isinstance(size, str) and "x" in size:
        width, _, height = size.partition("x")
        if not (width.isdigit() and height.isdigit()):
            raise bad_request(f"size must look like 1024x1024, got {size!r}", param="size")
        config["width"], config["height"] = int(width), int(height)
    if body.get("quality") in ("hd", "high", "premium"):
        config["quality"] = "premium"
    elif body.get("quality"):
        config["quality"] = "standard"
    return {"taskType": "TEXT_IMAGE", "textToImageParams": {"text": prompt}, "imageGenerationConfig": config}


def images_response(data: Mapping[str, Any], response_format: str | None) -> dict[str, Any]:
    if data.get("error"):
        raise GatewayError(400, f"bedrock: {data['error']}", code="image_generation_failed", retryable=False)
    images = data.get("images") or []
    if response_format == "b64_json":
        items = [{"b64_json": b64} for b64 in images]
    else:  # the gateway hosts nothing, so a "url" is a data URL carrying the PNG
        items = [{"url": "data:image/png;base64," + b64} for b64 in images]
    return {"created": int(time.time()), "data": items}
