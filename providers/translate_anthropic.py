"""Pure translations between OpenAI chat shapes and Anthropic's Messages API.

Four directions, each a set of pure functions (no I/O), shared by the Anthropic provider
and the Anthropic Messages ingress:

- OpenAI request → Messages request        (provider: `openai_to_native_body`)
- Messages reply/events → OpenAI reply/chunks (provider: `native_reply_to_openai`, `NativeToOpenAIStream`)
- Messages request → OpenAI request        (ingress: `native_to_openai_body`)
- OpenAI reply/chunks → Messages reply/events (ingress: `openai_reply_to_native`, `OpenAIToNativeStream`)

Plus `carry_over`, which applies the changes filters made to the OpenAI-shaped body of an
ingress request to the client's native body, keeping every untouched native part verbatim.
"""

from __future__ import annotations

import time
from typing import Any

import orjson

from ferro_proxy.errors import GatewayError, bad_request
from ferro_proxy.exchange import Usage

# ex.metadata: translate even on the Messages ingress, because a filter must read the reply in
# OpenAI shape (the MCP tool loop looks for its tools' calls there). Kept here, not in
# providers.anthropic, so filters can name it without importing (and registering) an adapter.
NATIVE_OFF = "anthropic_native_off"

DEFAULT_MAX_TOKENS = 4096
# The forced tool that carries a JSON-schema answer (OpenAI `response_format: json_schema`).
JSON_TOOL = "json_response"

_FINISH_BY_STOP_REASON = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "pause_turn": "stop",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
}
_STOP_REASON_BY_FINISH = {
    "stop": "end_turn",
    "length": "max_tokens",
    "tool_calls": "tool_use",
    "function_call": "tool_use",
    "content_filter": "refusal",
}
_SYSTEM_ROLES = ("system", "developer")


def finish_reason(stop_reason: str | None) -> str | None:
    if stop_reason is None:
        return None
    return _FINISH_BY_STOP_REASON.get(stop_reason, "stop")


def stop_reason(finish: str | None) -> str:
    return _STOP_REASON_BY_FINISH.get(finish or "stop", "end_turn")


# ====================================================================== OpenAI → Messages


def image_source(url: str) -> dict[str, Any]:
    """An OpenAI image URL (https or a base64 data URL) as an Anthropic image source."""
    if url.startswith("data:"):
        header, sep, data = url.partition(",")
        if not sep or ";base64" not in header:
            raise bad_request("image data URLs must be base64 encoded", code="invalid_image_url")
        return {"type": "base64", "media_type": header[5:].split(";", 1)[0], "data": data}
    return {"type": "url", "url": url}


def _part_to_block(part: Any) -> dict[str, Any] | None:
    if isinstance(part, str):
        return {"type": "text", "text": part} if part else None
    if not isinstance(part, dict):
        raise bad_request("message content parts must be objects", code="invalid_content")
    kind = part.get("type")
    if kind == "text":
        text = part.get("text") or ""
        return {"type": "text", "text": text} if text else None
    if kind == "image_url":
        image = part.get("image_url")
        url = image.get("url") if isinstance(image, dict) else image
        if not isinstance(url, str) or not url:
            raise bad_request("image_url parts need a url", code="invalid_image_url")
        return {"type": "image", "source": image_source(url)}
    raise bad_request(f"content part type {kind!r} is not supported by Anthropic", code="invalid_content")


def _content_blocks(content: Any) -> list[dict[str, Any]]:
    if content is None:
        return []
    if isinstance(content, str):
        return [{"type": "text", "text": content}] if content else []
    if isinstance(content, list):
        return [b for b in (_part_to_block(p) for p in content) if b is not None]
    raise bad_request("message content must be a string or an array", code="invalid_content")


def _text_of(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(
            p.get("text", "") if isinstance(p, dict) else str(p)
            for p in content
            if isinstance(p, str) or (isinstance(p, dict) and p.get("type") == "text")
        )
    return ""


def _tool_input(arguments: Any) -> dict[str, Any]:
    if isinstance(arguments, dict):
        return arguments
    if not arguments:
        return {}
    try:
        value = orjson.loads(arguments)
    except orjson.JSONDecodeError:
        raise bad_request(
            "tool call arguments must be a JSON object", code="invalid_tool_arguments"
        ) from None
    if not isinstance(value, dict):
        raise bad_request("tool call arguments must be a JSON object", code="invalid_tool_arguments")
    return value


def _native_message(msg: dict[str, Any]) -> dict[str, Any] | None:
    role = msg.get("role")
    if role == "user":
        if isinstance(msg.get("content"), str):
            return {"role": "user", "content": msg["content"]} if msg["content"] else None
        blocks = _content_blocks(msg.get("content"))
        return {"role": "user", "content": blocks} if blocks else None
    if role == "assistant":
        blocks = _content_blocks(msg.get("content"))
        for call in msg.get("tool_calls") or ():
            fn = call.get("function") or {}
            blocks.append(
                {
                    "type": "tool_use",
                    "id": call.get("id") or "",
                    "name": fn.get("name") or "",
                    "input": _tool_input(fn.get("arguments")),
                }
            )
        if not blocks:
            return None
        if len(blocks) == 1 and blocks[0]["type"] == "text":
            return {"role": "assistant", "content": blocks[0]["text"]}
        return {"role": "assistant", "content": blocks}
    if role in ("tool", "function"):
        result: dict[str, Any] = {
            "type": "tool_result",
            "tool_use_id": msg.get("tool_call_id") or msg.get("name") or "",
            "content": _text_of(msg.get("content")),
        }
        return {"role": "user", "content": [result]}
    raise bad_request(f"unsupported message role {role!r}", code="invalid_role")


def _as_blocks(content: Any) -> list[dict[str, Any]]:
    return [{"type": "text", "text": content}] if isinstance(content, str) else list(content)


def openai_messages_to_native(
    messages: list[dict[str, Any]],
) -> tuple[str | list[dict[str, Any]] | None, list[dict[str, Any]]]:
    """(system, messages) in Messages form. System/developer turns become `system`;
    tool results become `tool_result` blocks of a user turn; same-role turns are merged."""
    system_parts: list[Any] = []
    out: list[dict[str, Any]] = []
    for msg in messages:
        if not isinstance(msg, dict):
            raise bad_request("each message must be an object", code="invalid_message")
        if msg.get("role") in _SYSTEM_ROLES:
            system_parts.append(msg.get("content"))
            continue
        native = _native_message(msg)
        if native is None:
            continue
        if out and out[-1]["role"] == native["role"]:
            out[-1] = {"role": native["role"], "content": _as_blocks(out[-1]["content"])}
            new = _as_blocks(native["content"])
            if native["role"] == "user" and new and new[0]["type"] == "tool_result":
                # tool results must lead the user turn that answers the tool calls
                lead = [b for b in out[-1]["content"] if b["type"] == "tool_result"]
                rest = [b for b in out[-1]["content"] if b["type"] != "tool_result"]
                out[-1]["content"] = lead + new + rest
            else:
                out[-1]["content"].extend(new)
        else:
            out.append(native)
    return _native_system(system_parts), out


def _native_system(parts: list[Any]) -> str | list[dict[str, Any]] | None:
    if not parts:
        return None
    if all(isinstance(p, str) for p in parts):
        return "\n\n".join(parts)
    blocks: list[dict[str, Any]] = []
    for p in parts:
        blocks.extend(b for b in _content_blocks(p) if b["type"] == "text")
    return blocks


def openai_tools_to_native(tools: list[Any]) -> list[dict[str, Any]]:
    out = []
    for tool in tools:
        fn = tool.get("function") if isinstance(tool, dict) else None
        if not isinstance(fn, dict) or not fn.get("name"):
            raise bad_request("tools must be function tools with a name", code="invalid_tools", param="tools")
        native: dict[str, Any] = {
            "name": fn["name"],
            "input_schema": fn.get("parameters") or {"type": "object", "properties": {}},
        }
        if fn.get("description"):
            native["description"] = fn["description"]
        out.append(native)
    return out


def openai_tool_choice_to_native(choice: Any, parallel: Any) -> dict[str, Any] | None:
    native: dict[str, Any] | None
    if choice is None:
        native = None
    elif choice == "auto":
        native = {"type": "auto"}
    elif choice == "required":
        native = {"type": "any"}
    elif choice == "none":
        native = {"type": "none"}
    elif isinstance(choice, dict) and isinstance(choice.get("function"), dict):
        native = {"type": "tool", "name": choice["function"].get("name", "")}
    else:
        raise bad_request("unsupported tool_choice", code="invalid_tool_choice", param="tool_choice")
    if parallel is False:
        native = {**(native or {"type": "auto"}), "disable_parallel_tool_use": True}
    return native


def _stop_sequences(stop: Any) -> list[str] | None:
    if stop is None:
        return None
    return [stop] if isinstance(stop, str) else [s for s in stop if isinstance(s, str)]


def openai_to_native_body(
    body: dict[str, Any], default_max_tokens: int = DEFAULT_MAX_TOKENS
) -> tuple[dict[str, Any], bool]:
    """(Messages request, whether the forced JSON tool carries the answer)."""
    if (body.get("n") or 1) > 1:
        raise bad_request("Anthropic returns one choice per request; n must be 1", code="unsupported_n")
    messages = body.get("messages")
    if not isinstance(messages, list):
        raise bad_request("'messages' must be an array", code="invalid_type", param="messages")
    system, native_messages = openai_messages_to_native(messages)
    out: dict[str, Any] = {
        "model": body.get("model"),
        "max_tokens": body.get("max_completion_tokens") or body.get("max_tokens") or default_max_tokens,
        "messages": native_messages,
    }
    for key in ("temperature", "top_p", "top_k"):
        if body.get(key) is not None:
            out[key] = body[key]
    stops = _stop_sequences(body.get("stop"))
    if stops:
        out["stop_sequences"] = stops
    if body.get("user"):
        out["metadata"] = {"user_id": body["user"]}
    if body.get("stream"):
        out["stream"] = True
    if body.get("tools"):
        out["tools"] = openai_tools_to_native(body["tools"])
    tool_choice = openai_tool_choice_to_native(body.get("tool_choice"), body.get("parallel_tool_calls"))
    if tool_choice is not None and out.get("tools"):
        out["tool_choice"] = tool_choice
    if system:
        out["system"] = system
    json_tool = _apply_response_format(out, body.get("response_format"))
    return out, json_tool


def _apply_response_format(out: dict[str, Any], fmt: Any) -> bool:
    """JSON schema: a forced tool whose input is the answer (unless the client sent tools,
    then the schema goes into the system prompt). JSON object: a system instruction."""
    if not isinstance(fmt, dict) or fmt.get("type") not in ("json_object", "json_schema"):
        return False
    schema_spec = fmt.get("json_schema") if isinstance(fmt.get("json_schema"), dict) else {}
    schema = schema_spec.get("schema") if fmt["type"] == "json_schema" else None
    if schema is not None and not out.get("tools"):
        out["tools"] = [
            {
                "name": JSON_TOOL,
                "description": "Give the answer as this tool's input, matching its schema.",
                "input_schema": schema,
            }
        ]
        out["tool_choice"] = {"type": "tool", "name": JSON_TOOL}
        return True
    instruction = "Respond with a single valid JSON object and nothing else."
    if schema is not None:
        instruction += " It must match this JSON schema: " + orjson.dumps(schema).decode()
    out["system"] = _append_system(out.get("system"), instruction)
    return False


def _append_system(system: Any, text: str) -> Any:
    if not system:
        return text
    if isinstance(system, str):
        return system + "\n\n" + text
    return [*system, {"type": "text", "text": text}]


# ====================================================================== Messages reply → OpenAI


def native_usage(usage: Any) -> Usage:
    """Anthropic usage → gateway usage. Anthropic's input_tokens exclude cache reads and
    writes; OpenAI's prompt_tokens include them, with reads reported as cached_tokens."""
    if not isinstance(usage, dict):
        return Usage()
    cache_read = int(usage.get("cache_read_input_tokens") or 0)
    cache_write = int(usage.get("cache_creation_input_tokens") or 0)
    return Usage(
        prompt_tokens=int(usage.get("input_tokens") or 0) + cache_read + cache_write,
        completion_tokens=int(usage.get("output_tokens") or 0),
        cached_tokens=cache_read,
    )


def native_reply_to_openai(data: dict[str, Any], json_tool: bool = False) -> dict[str, Any]:
    texts: list[str] = []
    calls: list[dict[str, Any]] = []
    for block in data.get("content") or ():
        kind = block.get("type")
        if kind == "text":
            texts.append(block.get("text", ""))
        elif kind == "tool_use":
            arguments = orjson.dumps(block.get("input") or {}).decode()
            if json_tool and block.get("name") == JSON_TOOL:
                texts.append(arguments)
                continue
            calls.append(
                {
                    "id": block.get("id"),
                    "type": "function",
                    "function": {"name": block.get("name"), "arguments": arguments},
                }
            )
    message: dict[str, Any] = {"role": "assistant", "content": "".join(texts) if texts else None}
    if calls:
        message["tool_calls"] = calls
    finish = finish_reason(data.get("stop_reason")) or "stop"
    if json_tool and finish == "tool_calls" and not calls:
        finish = "stop"
    return {
        "id": data.get("id"),
        "object": "chat.completion",
        "created": int(time.time()),
        "model": data.get("model"),
        "choices": [{"index": 0, "message": message, "finish_reason": finish, "logprobs": None}],
        "usage": native_usage(data.get("usage")).to_openai(),
    }


class NativeToOpenAIStream:
    """Anthropic stream events in, OpenAI chat.completion.chunk dicts out, one event at a time."""

    def __init__(self, model: str, json_tool: bool = False) -> None:
        self.id = ""
        self.model = model
        self.created = int(time.time())
        self.json_tool = json_tool
        self.usage = Usage()
        self.input_usage: dict[str, Any] = {}
        self.finished = False  # message_stop seen
        self._tool_index: dict[int, int] = {}  # content block index → OpenAI tool call index
        self._json_blocks: set[int] = set()

    def _chunk(self, delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}],
        }

    def usage_chunk(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "choices": [],
            "usage": self.usage.to_openai(),
        }

    def feed(self, name: str | None, data: dict[str, Any]) -> list[dict[str, Any]]:
        kind = data.get("type") or name
        if kind == "message_start":
            message = data.get("message") or {}
            self.id = message.get("id") or self.id
            self.model = message.get("model") or self.model
            self.input_usage = dict(message.get("usage") or {})
            self.usage = native_usage(self.input_usage)
            return [self._chunk({"role": "assistant", "content": ""})]
        if kind == "content_block_start":
            return self._block_start(int(data.get("index", 0)), data.get("content_block") or {})
        if kind == "content_block_delta":
            return self._block_delta(int(data.get("index", 0)), data.get("delta") or {})
        if kind == "message_delta":
            usage = data.get("usage")
            if isinstance(usage, dict):  # cumulative counts: newer fields override the start's
                self.input_usage.update({k: v for k, v in usage.items() if v is not None})
                self.usage = native_usage(self.input_usage)
            reason = (data.get("delta") or {}).get("stop_reason")
            finish = finish_reason(reason)
            if finish is None:
                return []
            if self.json_tool and finish == "tool_calls" and not self._tool_index:
                finish = "stop"
            return [self._chunk({}, finish)]
        if kind == "message_stop":
            self.finished = True
            return []
        if kind == "error":
            raise stream_error(data)
        return []  # ping, content_block_stop, and event types added later

    def _block_start(self, index: int, block: dict[str, Any]) -> list[dict[str, Any]]:
        kind = block.get("type")
        if kind == "text":
            text = block.get("text") or ""
            return [self._chunk({"content": text})] if text else []
        if kind == "tool_use":
            if self.json_tool and block.get("name") == JSON_TOOL:
                self._json_blocks.add(index)
                return []
            call_index = len(self._tool_index)
            self._tool_index[index] = call_index
            call = {
                "index": call_index,
                "id": block.get("id"),
                "type": "function",
                "function": {"name": block.get("name"), "arguments": ""},
            }
            return [self._chunk({"tool_calls": [call]})]
        return []

    def _block_delta(self, index: int, delta: dict[str, Any]) -> list[dict[str, Any]]:
        kind = delta.get("type")
        if kind == "text_delta":
            return [self._chunk({"content": delta.get("text", "")})]
        if kind == "input_json_delta":
            fragment = delta.get("partial_json", "")
            if not fragment:
                return []
            if index in self._json_blocks:
                return [self._chunk({"content": fragment})]
            call_index = self._tool_index.get(index)
            if call_index is None:
                return []
            return [self._chunk({"tool_calls": [{"index": call_index, "function": {"arguments": fragment}}]})]
        return []  # thinking and signature deltas have no OpenAI chat equivalent


def stream_error(data: dict[str, Any], provider: str = "anthropic") -> GatewayError:
    """An Anthropic `error` event as the GatewayError that ends the stream."""
    err = data.get("error") if isinstance(data.get("error"), dict) else {}
    kind = str(err.get("type") or "api_error")
    status = {"overloaded_error": 529, "rate_limit_error": 429, "invalid_request_error": 400}.get(kind, 502)
    return GatewayError(
        status,
        f"{provider}: {err.get('message') or 'stream error'}",
        code=kind,
        type=kind if kind == "overloaded_error" else None,
        provider=provider,
    )


# ====================================================================== Messages → OpenAI (ingress)


def _native_image_url(source: dict[str, Any]) -> str:
    if source.get("type") == "base64":
        return f"data:{source.get('media_type', 'image/png')};base64,{source.get('data', '')}"
    return str(source.get("url", ""))


def _tool_result_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(b.get("text", "") for b in content if isinstance(b, dict) and b.get("type") == "text")
    return ""


def native_system_to_openai(system: Any) -> list[dict[str, Any]]:
    if not system:
        return []
    if isinstance(system, str):
        return [{"role": "system", "content": system}]
    text = "\n\n".join(b.get("text", "") for b in system if isinstance(b, dict) and b.get("type") == "text")
    return [{"role": "system", "content": text}] if text else []


def native_message_to_openai(msg: Any) -> list[dict[str, Any]]:
    """One Messages turn as the OpenAI messages it becomes (tool results split out).
    Thinking blocks and block types OpenAI has no form for are left out of this view."""
    if not isinstance(msg, dict) or msg.get("role") not in ("user", "assistant"):
        role = msg.get("role") if isinstance(msg, dict) else None
        raise bad_request(
            f"messages: unexpected role {role!r}; use the top-level system parameter for system prompts",
            code="invalid_role",
            param="messages",
        )
    role, content = msg["role"], msg.get("content")
    if isinstance(content, str):
        return [{"role": role, "content": content}]
    if not isinstance(content, list):
        raise bad_request("message content must be a string or an array", code="invalid_content")
    out: list[dict[str, Any]] = []
    parts: list[dict[str, Any]] = []
    calls: list[dict[str, Any]] = []
    for block in content:
        kind = block.get("type") if isinstance(block, dict) else None
        if kind == "text":
            parts.append({"type": "text", "text": block.get("text", "")})
        elif kind == "image" and isinstance(block.get("source"), dict):
            parts.append({"type": "image_url", "image_url": {"url": _native_image_url(block["source"])}})
        elif kind == "tool_use":
            calls.append(
                {
                    "id": block.get("id"),
                    "type": "function",
                    "function": {
                        "name": block.get("name"),
                        "arguments": orjson.dumps(block.get("input") or {}).decode(),
                    },
                }
            )
        elif kind == "tool_result":
            text = _tool_result_text(block.get("content"))
            out.append(
                {
                    "role": "tool",
                    "tool_call_id": block.get("tool_use_id"),
                    "content": f"Error: {text}" if block.get("is_error") else text,
                }
            )
    if role == "assistant":
        text = "".join(p["text"] for p in parts if p["type"] == "text")
        if text or calls:
            turn: dict[str, Any] = {"role": "assistant", "content": text or None}
            if calls:
                turn["tool_calls"] = calls
            out.append(turn)
    elif parts:
        single_text = len(parts) == 1 and parts[0]["type"] == "text"
        out.append({"role": "user", "content": parts[0]["text"] if single_text else parts})
    return out


def native_tools_to_openai(tools: list[Any]) -> list[dict[str, Any]]:
    out = []
    for tool in tools:
        if not isinstance(tool, dict) or not tool.get("name"):
            raise bad_request("tools: every tool needs a name", code="invalid_tools", param="tools")
        fn: dict[str, Any] = {
            "name": tool["name"],
            "parameters": tool.get("input_schema") or {"type": "object", "properties": {}},
        }
        if tool.get("description"):
            fn["description"] = tool["description"]
        out.append({"type": "function", "function": fn})
    return out


def native_tool_choice_to_openai(choice: Any) -> tuple[Any, bool | None]:
    """(OpenAI tool_choice, parallel_tool_calls) for an Anthropic tool_choice."""
    if not isinstance(choice, dict):
        return None, None
    parallel = False if choice.get("disable_parallel_tool_use") else None
    kind = choice.get("type")
    if kind == "any":
        return "required", parallel
    if kind == "none":
        return "none", parallel
    if kind == "tool":
        return {"type": "function", "function": {"name": choice.get("name")}}, parallel
    return "auto", parallel


def native_to_openai_body(native: dict[str, Any]) -> dict[str, Any]:
    """The OpenAI-shaped view of a Messages request, for the filter chain and non-Anthropic
    providers. Always asks for the final usage chunk: `message_delta` reports usage."""
    messages = native_system_to_openai(native.get("system"))
    for msg in native.get("messages") or ():
        messages.extend(native_message_to_openai(msg))
    out: dict[str, Any] = {"model": native.get("model"), "messages": messages}
    if native.get("max_tokens") is not None:
        out["max_tokens"] = native["max_tokens"]
    for key in ("temperature", "top_p"):
        if native.get(key) is not None:
            out[key] = native[key]
    if native.get("stop_sequences"):
        out["stop"] = list(native["stop_sequences"])
    metadata = native.get("metadata")
    if isinstance(metadata, dict) and metadata.get("user_id"):
        out["user"] = metadata["user_id"]
    if native.get("tools"):
        out["tools"] = native_tools_to_openai(native["tools"])
        choice, parallel = native_tool_choice_to_openai(native.get("tool_choice"))
        if choice is not None:
            out["tool_choice"] = choice
        if parallel is not None:
            out["parallel_tool_calls"] = parallel
    if native.get("stream"):
        out["stream"] = True
        out["stream_options"] = {"include_usage": True}
    return out


# ====================================================================== filter changes → native


def carry_over(native: dict[str, Any], body: dict[str, Any]) -> dict[str, Any]:
    """The native body to send upstream, with every change filters made to the OpenAI view.

    Carried: `model`; `messages` (system and turns: each native turn whose OpenAI view is
    unchanged is kept verbatim; from the first changed turn on, the turns are re-derived
    from the OpenAI messages); `tools` per tool; `tool_choice`/`parallel_tool_calls`;
    `max_tokens`/`max_completion_tokens`; `temperature`; `top_p`; `stop`; `user`; `stream`.
    Other keys a filter adds to the OpenAI view have no Messages form and are ignored.
    """
    out = dict(native)
    if body.get("model"):
        out["model"] = body["model"]
    view = native_to_openai_body(native)
    if body.get("messages") != view["messages"]:
        _carry_messages(native, body.get("messages") or [], out)
    max_tokens = body.get("max_completion_tokens") or body.get("max_tokens")
    if max_tokens is not None and max_tokens != view.get("max_tokens"):
        out["max_tokens"] = max_tokens
    for key in ("temperature", "top_p"):
        if body.get(key) != view.get(key):
            _set_or_drop(out, key, body.get(key))
    if body.get("stop") != view.get("stop"):
        _set_or_drop(out, "stop_sequences", _stop_sequences(body.get("stop")) or None)
    if body.get("user") != view.get("user"):
        meta = {k: v for k, v in (native.get("metadata") or {}).items() if k != "user_id"}
        if body.get("user"):
            meta["user_id"] = body["user"]
        _set_or_drop(out, "metadata", meta or None)
    if bool(body.get("stream")) != bool(view.get("stream")):
        _set_or_drop(out, "stream", True if body.get("stream") else None)
    if body.get("tools") != view.get("tools"):
        _carry_tools(native, body.get("tools") or [], out)
    if (body.get("tool_choice"), body.get("parallel_tool_calls")) != (
        view.get("tool_choice"),
        view.get("parallel_tool_calls"),
    ):
        choice = openai_tool_choice_to_native(body.get("tool_choice"), body.get("parallel_tool_calls"))
        _set_or_drop(out, "tool_choice", choice if out.get("tools") else None)
    return out


def _set_or_drop(out: dict[str, Any], key: str, value: Any) -> None:
    if value is None:
        out.pop(key, None)
    else:
        out[key] = value


def _carry_messages(native: dict[str, Any], messages: list[Any], out: dict[str, Any]) -> None:
    system_now = [m for m in messages if isinstance(m, dict) and m.get("role") in _SYSTEM_ROLES]
    turns_now = [m for m in messages if not (isinstance(m, dict) and m.get("role") in _SYSTEM_ROLES)]
    if system_now != native_system_to_openai(native.get("system")):
        system, _ = openai_messages_to_native(system_now)
        _set_or_drop(out, "system", system)
    kept: list[dict[str, Any]] = []
    pos = 0
    for turn in native.get("messages") or ():
        group = native_message_to_openai(turn)
        if turns_now[pos : pos + len(group)] != group:
            break
        kept.append(turn)
        pos += len(group)
    _, rest = openai_messages_to_native(turns_now[pos:])
    out["messages"] = kept + rest


def _carry_tools(native: dict[str, Any], tools: list[Any], out: dict[str, Any]) -> None:
    by_view = {}
    for tool in native.get("tools") or ():
        by_view[orjson.dumps(native_tools_to_openai([tool])[0], option=orjson.OPT_SORT_KEYS)] = tool
    carried = []
    for tool in tools:
        original = by_view.get(orjson.dumps(tool, option=orjson.OPT_SORT_KEYS))
        carried.append(original if original is not None else openai_tools_to_native([tool])[0])
    _set_or_drop(out, "tools", carried or None)


# ====================================================================== OpenAI reply → Messages (ingress)


def openai_usage_to_native(usage: Any) -> dict[str, int]:
    u = Usage.from_openai(usage) or Usage()
    return {
        "input_tokens": max(0, u.prompt_tokens - u.cached_tokens),
        "output_tokens": u.completion_tokens,
        "cache_read_input_tokens": u.cached_tokens,
        "cache_creation_input_tokens": 0,
    }


def native_message_id(openai_id: Any) -> str:
    text = str(openai_id or "")
    return text if text.startswith("msg_") else "msg_" + (text.removeprefix("chatcmpl-") or "gateway")


def openai_reply_to_native(data: dict[str, Any], model: str) -> dict[str, Any]:
    choices = data.get("choices") or [{}]
    choice = choices[0] if isinstance(choices[0], dict) else {}
    message = choice.get("message") or {}
    content: list[dict[str, Any]] = []
    text = message.get("content")
    if isinstance(text, list):
        text = _text_of(text)
    if text:
        content.append({"type": "text", "text": text})
    for call in message.get("tool_calls") or ():
        fn = call.get("function") or {}
        try:
            tool_input = _tool_input(fn.get("arguments"))
        except GatewayError:
            tool_input = {}
        content.append(
            {"type": "tool_use", "id": call.get("id"), "name": fn.get("name"), "input": tool_input}
        )
    return {
        "id": native_message_id(data.get("id")),
        "type": "message",
        "role": "assistant",
        "model": data.get("model") or model,
        "content": content,
        "stop_reason": stop_reason(choice.get("finish_reason")),
        "stop_sequence": None,
        "usage": openai_usage_to_native(data.get("usage")),
    }


def sse_event(name: str, data: dict[str, Any]) -> bytes:
    return b"event: " + name.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"


class OpenAIToNativeStream:
    """OpenAI chat.completion.chunk dicts in, Anthropic SSE events (bytes) out.

    Blocks open lazily: text opens a text block, each new tool call index a tool_use block
    (closing the block before it); `finish()` closes the last block and sends
    `message_delta` (stop reason, usage) and `message_stop`.
    """

    def __init__(self, model: str) -> None:
        self.model = model
        self.started = False
        self.pinged = False
        self.block = -1  # index of the open content block, -1 when none is open
        self.open_kind: str | None = None
        self.next_block = 0
        self.tool_blocks: dict[int, int] = {}  # OpenAI tool call index → content block index
        self.finish_reason: str | None = None
        self.usage: dict[str, Any] | None = None

    def _start(self, chunk: dict[str, Any]) -> list[bytes]:
        self.started = True
        message = {
            "id": native_message_id(chunk.get("id")),
            "type": "message",
            "role": "assistant",
            "model": chunk.get("model") or self.model,
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": {"input_tokens": 0, "output_tokens": 0},
        }
        return [sse_event("message_start", {"type": "message_start", "message": message})]

    def _open(self, block: dict[str, Any], kind: str) -> list[bytes]:
        events = self._close()
        self.block, self.open_kind = self.next_block, kind
        self.next_block += 1
        events.append(
            sse_event(
                "content_block_start",
                {"type": "content_block_start", "index": self.block, "content_block": block},
            )
        )
        if not self.pinged:
            self.pinged = True
            events.append(sse_event("ping", {"type": "ping"}))
        return events

    def _close(self) -> list[bytes]:
        if self.block < 0:
            return []
        index, self.block, self.open_kind = self.block, -1, None
        return [sse_event("content_block_stop", {"type": "content_block_stop", "index": index})]

    def _delta(self, index: int, delta: dict[str, Any]) -> bytes:
        return sse_event(
            "content_block_delta", {"type": "content_block_delta", "index": index, "delta": delta}
        )

    def feed(self, chunk: dict[str, Any]) -> list[bytes]:
        events = [] if self.started else self._start(chunk)
        if isinstance(chunk.get("usage"), dict):
            self.usage = chunk["usage"]
        for choice in chunk.get("choices") or ():
            if not isinstance(choice, dict) or choice.get("index", 0) != 0:
                continue
            delta = choice.get("delta") or {}
            text = delta.get("content")
            if text:
                if self.open_kind != "text":
                    events += self._open({"type": "text", "text": ""}, "text")
                events.append(self._delta(self.block, {"type": "text_delta", "text": text}))
            for call in delta.get("tool_calls") or ():
                events += self._tool_delta(call)
            if choice.get("finish_reason"):
                self.finish_reason = choice["finish_reason"]
        return events

    def _tool_delta(self, call: dict[str, Any]) -> list[bytes]:
        events: list[bytes] = []
        call_index = int(call.get("index", 0))
        fn = call.get("function") or {}
        block = self.tool_blocks.get(call_index)
        if block is None:
            start = {
                "type": "tool_use",
                "id": call.get("id") or "",
                "name": fn.get("name") or "",
                "input": {},
            }
            events += self._open(start, "tool_use")
            block = self.tool_blocks[call_index] = self.block
        arguments = fn.get("arguments")
        if arguments:
            events.append(self._delta(block, {"type": "input_json_delta", "partial_json": arguments}))
        return events

    def finish(self) -> list[bytes]:
        events = [] if self.started else self._start({})
        events += self._close()
        if not self.pinged:
            events.append(sse_event("ping", {"type": "ping"}))
        delta = {
            "type": "message_delta",
            "delta": {"stop_reason": stop_reason(self.finish_reason), "stop_sequence": None},
        }
        delta["usage"] = openai_usage_to_native(self.usage)
        events.append(sse_event("message_delta", delta))
        events.append(sse_event("message_stop", {"type": "message_stop"}))
        return events


# ====================================================================== errors in Anthropic's shape

_NATIVE_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    504: "timeout_error",
    529: "overloaded_error",
}


def native_error_type(status: int, given: str | None = None) -> str:
    if given == "overloaded_error":
        return given
    return _NATIVE_ERROR_TYPES.get(status, "api_error" if status >= 500 else "invalid_request_error")


def native_error_payload(status: int, message: str, given_type: str | None = None) -> dict[str, Any]:
    return {"type": "error", "error": {"type": native_error_type(status, given_type), "message": message}}
