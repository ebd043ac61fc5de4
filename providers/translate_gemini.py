"""OpenAI ⇄ Google Gen AI (Gemini API and Vertex AI) translation, as pure functions.

Request side: OpenAI chat bodies become `generateContent` bodies (systemInstruction,
contents with roles user/model, inlineData/fileData parts, functionDeclarations,
functionCall/functionResponse, generationConfig). Response side: `GenerateContentResponse`
objects become chat.completion objects, and a `GeminiStreamTranslator` turns each
`streamGenerateContent?alt=sse` event into chat.completion.chunk dicts as it arrives.
Embeddings (batchEmbedContents, Vertex `predict`) and Imagen `predict` are here too.
"""

from __future__ import annotations

import base64
import mimetypes
import struct
import time
import uuid
from typing import Any

import orjson

from ferro_proxy.errors import bad_request
from ferro_proxy.exchange import Usage

# Gemini finishReason -> OpenAI finish_reason (anything else is a plain stop).
_FINISH = {
    "STOP": "stop",
    "MAX_TOKENS": "length",
    "SAFETY": "content_filter",
    "RECITATION": "content_filter",
    "BLOCKLIST": "content_filter",
    "PROHIBITED_CONTENT": "content_filter",
    "SPII": "content_filter",
    "IMAGE_SAFETY": "content_filter",
}
# OpenAI reasoning_effort -> Gemini thinkingBudget (tokens).
_THINKING_BUDGET = {"none": 0, "minimal": 0, "low": 1024, "medium": 8192, "high": 24576}
# JSON-schema keywords Gemini's OpenAPI-subset Schema understands.
_SCHEMA_KEYS = frozenset(
    {
        "type",
        "format",
        "title",
        "description",
        "nullable",
        "enum",
        "maxItems",
        "minItems",
        "properties",
        "required",
        "minProperties",
        "maxProperties",
        "minLength",
        "maxLength",
        "pattern",
        "example",
        "anyOf",
        "propertyOrdering",
        "default",
        "items",
        "minimum",
        "maximum",
    }
)
_IMAGEN_ASPECT = {
    "1024x1024": "1:1",
    "256x256": "1:1",
    "512x512": "1:1",
    "1792x1024": "16:9",
    "1024x1792": "9:16",
    "1536x1024": "3:2",
    "1024x1536": "2:3",
}


def strip_model_prefix(model: str) -> str:
    """`models/gemini-2.0-flash` and `gemini-2.0-flash` name the same model."""
    return model[7:] if model.startswith("models/") else model


# ------------------------------------------------------------------ request


def _data_url_part(url: str) -> dict[str, Any]:
    header, sep, data = url.partition(",")
    if not sep or ";base64" not in header:
        raise bad_request("image data URLs must be base64 encoded (data:<mime>;base64,...)", param="messages")
    mime = header[5:].split(";", 1)[0] or "application/octet-stream"
    return {"inlineData": {"mimeType": mime, "data": data}}


def _url_part(url: str) -> dict[str, Any]:
    if url.startswith("data:"):
        return _data_url_part(url)
    mime = mimetypes.guess_type(url.split("?", 1)[0])[0] or "image/jpeg"
    return {"fileData": {"mimeType": mime, "fileUri": url}}


def content_parts(content: Any) -> list[dict[str, Any]]:
    """OpenAI message content (a string or a list of parts) -> Gemini parts."""
    if content is None:
        return []
    if isinstance(content, str):
        return [{"text": content}] if content else []
    if not isinstance(content, list):
        raise bad_request("message content must be a string or an array of parts", param="messages")
    parts: list[dict[str, Any]] = []
    for part in content:
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text":
            parts.append({"text": part.get("text", "")})
        elif kind == "image_url":
            image = part.get("image_url")
            url = image.get("url") if isinstance(image, dict) else image
            if not isinstance(url, str) or not url:
                raise bad_request("image_url part without a url", param="messages")
            parts.append(_url_part(url))
        elif kind == "input_audio":
            audio = part.get("input_audio") or {}
            parts.append(
                {
                    "inlineData": {
                        "mimeType": f"audio/{audio.get('format', 'wav')}",
                        "data": audio.get("data", ""),
                    }
                }
            )
        elif kind == "file":
            file = part.get("file") or {}
            if isinstance(file.get("file_data"), str):
                parts.append(_url_part(file["file_data"]))
            else:
                raise bad_request("file parts need file_data (a base64 data URL)", param="messages")
        else:
            raise bad_request(f"unsupported content part type {kind!r}", param="messages")
    return parts


def _text_of(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") == "text")
    return ""


def _tool_response(content: Any) -> dict[str, Any]:
    """A tool message's content as a functionResponse `response` object."""
    text = _text_of(content)
    try:
        parsed = orjson.loads(text) if text else None
    except orjson.JSONDecodeError:
        parsed = None
    return parsed if isinstance(parsed, dict) else {"content": text}


def _function_args(arguments: Any) -> dict[str, Any]:
    if isinstance(arguments, dict):
        return arguments
    if not arguments:
        return {}
    try:
        parsed = orjson.loads(arguments)
    except orjson.JSONDecodeError:
        raise bad_request("assistant tool_calls arguments must be a JSON object", param="messages") from None
    if not isinstance(parsed, dict):
        raise bad_request("assistant tool_calls arguments must be a JSON object", param="messages")
    return parsed


def messages_to_contents(messages: list[Any]) -> tuple[dict[str, Any] | None, list[dict[str, Any]]]:
    """(systemInstruction, contents) from OpenAI messages; consecutive turns of a role merge."""
    system_parts: list[dict[str, Any]] = []
    contents: list[dict[str, Any]] = []
    call_names: dict[str, str] = {}

    def add(role: str, parts: list[dict[str, Any]]) -> None:
        if not parts:
            return
        if contents and contents[-1]["role"] == role:
            contents[-1]["parts"].extend(parts)
        else:
            contents.append({"role": role, "parts": parts})

    for msg in messages:
        if not isinstance(msg, dict):
            raise bad_request("each message must be an object", param="messages")
        role = msg.get("role")
        if role in ("system", "developer"):
            text = _text_of(msg.get("content"))
            if text:
                system_parts.append({"text": text})
        elif role == "user":
            add("user", content_parts(msg.get("content")))
        elif role == "assistant":
            parts = content_parts(msg.get("content"))
            for call in msg.get("tool_calls") or []:
                fn = call.get("function") or {}
                name = fn.get("name") or ""
                call_names[call.get("id", "")] = name
                parts.append({"functionCall": {"name": name, "args": _function_args(fn.get("arguments"))}})
            add("model", parts)
        elif role == "tool":
            call_id = msg.get("tool_call_id") or ""
            name = call_names.get(call_id) or msg.get("name")
            if not name:
                raise bad_request(
                    f"tool message refers to unknown tool_call_id {call_id!r}", param="messages"
                )
            add(
                "user", [{"functionResponse": {"name": name, "response": _tool_response(msg.get("content"))}}]
            )
        elif role == "function":  # the legacy OpenAI form
            add(
                "user",
                [
                    {
                        "functionResponse": {
                            "name": msg.get("name", ""),
                            "response": _tool_response(msg.get("content")),
                        }
                    }
                ],
            )
        else:
            raise bad_request(f"unsupported message role {role!r}", param="messages")
    system = {"parts": system_parts} if system_parts else None
    return system, contents


def to_gemini_schema(schema: Any) -> Any:
    """A JSON schema reduced to the OpenAPI subset Gemini's `Schema` accepts."""
    if not isinstance(schema, dict):
        return schema
    out: dict[str, Any] = {}
    for key, value in schema.items():
        if key not in _SCHEMA_KEYS:
            continue
        if key == "type":
            if isinstance(value, list):
                kinds = [v for v in value if v != "null"]
                if len(kinds) < len(value):
                    out["nullable"] = True
                value = kinds[0] if kinds else "string"
            out["type"] = str(value).upper()
        elif key == "properties" and isinstance(value, dict):
            out["properties"] = {name: to_gemini_schema(sub) for name, sub in value.items()}
        elif key == "items":
            out["items"] = to_gemini_schema(value)
        elif key == "anyOf" and isinstance(value, list):
            out["anyOf"] = [to_gemini_schema(v) for v in value]
        else:
            out[key] = value
    return out


def tools_to_gemini(tools: Any) -> list[dict[str, Any]] | None:
    if not tools:
        return None
    declarations: list[dict[str, Any]] = []
    for tool in tools:
        if not isinstance(tool, dict) or tool.get("type") != "function":
            raise bad_request("only tools of type 'function' are supported for Gemini", param="tools")
        fn = tool.get("function") or {}
        decl: dict[str, Any] = {"name": fn.get("name", "")}
        if fn.get("description"):
            decl["description"] = fn["description"]
        params = fn.get("parameters")
        if isinstance(params, dict) and params.get("properties"):
            decl["parameters"] = to_gemini_schema(params)
        declarations.append(decl)
    return [{"functionDeclarations": declarations}]


def tool_choice_to_gemini(choice: Any) -> dict[str, Any] | None:
    if choice is None:
        return None
    if choice == "none":
        config: dict[str, Any] = {"mode": "NONE"}
    elif choice == "auto":
        config = {"mode": "AUTO"}
    elif choice == "required":
        config = {"mode": "ANY"}
    elif isinstance(choice, dict) and isinstance(choice.get("function"), dict):
        config = {"mode": "ANY", "allowedFunctionNames": [choice["function"].get("name", "")]}
    else:
        raise bad_request("unsupported tool_choice", param="tool_choice")
    return {"functionCallingConfig": config}


def generation_config(body: dict[str, Any]) -> dict[str, Any]:
    config: dict[str, Any] = {}
    max_tokens = body.get("max_completion_tokens") or body.get("max_tokens")
    if max_tokens:
        config["maxOutputTokens"] = max_tokens
    for src, dst in (
        ("temperature", "temperature"),
        ("top_p", "topP"),
        ("seed", "seed"),
        ("presence_penalty", "presencePenalty"),
        ("frequency_penalty", "frequencyPenalty"),
    ):
        if body.get(src) is not None:
            config[dst] = body[src]
    if body.get("n") and body["n"] != 1:
        config["candidateCount"] = body["n"]
    stop = body.get("stop")
    if stop:
        config["stopSequences"] = [stop] if isinstance(stop, str) else list(stop)
    fmt = body.get("response_format")
    if isinstance(fmt, dict):
        if fmt.get("type") == "json_object":
            config["responseMimeType"] = "application/json"
        elif fmt.get("type") == "json_schema":
            config["responseMimeType"] = "application/json"
            schema = (fmt.get("json_schema") or {}).get("schema")
            if isinstance(schema, dict):
                config["responseSchema"] = to_gemini_schema(schema)
    effort = body.get("reasoning_effort")
    if effort in _THINKING_BUDGET:
        config["thinkingConfig"] = {"thinkingBudget": _THINKING_BUDGET[effort]}
    return config


def chat_request(body: dict[str, Any]) -> dict[str, Any]:
    """An OpenAI chat body -> a generateContent body (the model goes in the URL)."""
    messages = body.get("messages")
    if not isinstance(messages, list):
        raise bad_request("'messages' must be an array", param="messages")
    system, contents = messages_to_contents(messages)
    if not contents:
        raise bad_request("Gemini needs at least one user message besides system prompts", param="messages")
    out: dict[str, Any] = {"contents": contents}
    if system is not None:
        out["systemInstruction"] = system
    tools = tools_to_gemini(body.get("tools"))
    if tools:
        out["tools"] = tools
        choice = tool_choice_to_gemini(body.get("tool_choice"))
        if choice is not None:
            out["toolConfig"] = choice
    config = generation_config(body)
    if config:
        out["generationConfig"] = config
    return out


# ------------------------------------------------------------------ response


def usage_from_gemini(meta: Any) -> Usage | None:
    """usageMetadata -> Usage; thoughts count as completion tokens, as OpenAI counts reasoning."""
    if not isinstance(meta, dict):
        return None
    thoughts = int(meta.get("thoughtsTokenCount") or 0)
    return Usage(
        prompt_tokens=int(meta.get("promptTokenCount") or 0) + int(meta.get("toolUsePromptTokenCount") or 0),
        completion_tokens=int(meta.get("candidatesTokenCount") or 0) + thoughts,
        cached_tokens=int(meta.get("cachedContentTokenCount") or 0),
        reasoning_tokens=thoughts,
    )


def finish_reason(reason: Any, has_tool_calls: bool) -> str | None:
    if has_tool_calls:
        return "tool_calls"
    if not reason or reason == "FINISH_REASON_UNSPECIFIED":
        return None
    return _FINISH.get(str(reason), "stop")


def new_call_id() -> str:
    return "call_" + uuid.uuid4().hex[:24]


def _tool_call(call: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": call.get("id") or new_call_id(),
        "type": "function",
        "function": {
            "name": call.get("name", ""),
            "arguments": orjson.dumps(call.get("args") or {}).decode(),
        },
    }


def chat_response(data: dict[str, Any], model: str) -> tuple[dict[str, Any], Usage | None]:
    """A GenerateContentResponse -> (chat.completion dict, usage)."""
    choices: list[dict[str, Any]] = []
    for i, cand in enumerate(data.get("candidates") or []):
        texts: list[str] = []
        calls: list[dict[str, Any]] = []
        for part in (cand.get("content") or {}).get("parts") or []:
            if part.get("thought"):
                continue
            if "text" in part:
                texts.append(part["text"])
            elif "functionCall" in part:
                calls.append(_tool_call(part["functionCall"]))
        message: dict[str, Any] = {
            "role": "assistant",
            "content": "".join(texts) if texts or not calls else None,
        }
        if calls:
            message["tool_calls"] = calls
        choices.append(
            {
                "index": cand.get("index", i),
                "message": message,
                "finish_reason": finish_reason(cand.get("finishReason"), bool(calls)) or "stop",
            }
        )
    if not choices:  # the prompt itself was blocked
        choices.append(
            {"index": 0, "message": {"role": "assistant", "content": None}, "finish_reason": "content_filter"}
        )
    usage = usage_from_gemini(data.get("usageMetadata"))
    completion = {
        "id": "chatcmpl-" + (data.get("responseId") or uuid.uuid4().hex),
        "object": "chat.completion",
        "created": int(time.time()),
        "model": data.get("modelVersion") or model,
        "choices": choices,
        "usage": (usage or Usage()).to_openai(),
    }
    return completion, usage


class GeminiStreamTranslator:
    """Turns each streamGenerateContent event into chat.completion.chunk dicts.

    Gemini sends whole function calls in one event; each becomes an OpenAI tool-call delta
    with id, type and name, then one arguments fragment. The stream is complete once a
    candidate carried a finishReason; `usage` holds the last usageMetadata seen.
    """

    __slots__ = ("id", "created", "model", "finished", "usage", "_started", "_tool_index", "_has_calls")

    def __init__(self, model: str) -> None:
        self.id = "chatcmpl-" + uuid.uuid4().hex
        self.created = int(time.time())
        self.model = model
        self.finished = False
        self.usage: Usage | None = None
        self._started: set[int] = set()
        self._tool_index: dict[int, int] = {}
        self._has_calls: set[int] = set()

    def _chunk(self, index: int, delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "choices": [{"index": index, "delta": delta, "finish_reason": finish}],
        }

    def feed(self, event: dict[str, Any]) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        if event.get("usageMetadata"):
            self.usage = usage_from_gemini(event["usageMetadata"])
        if event.get("modelVersion"):
            self.model = event["modelVersion"]
        candidates = event.get("candidates") or []
        if not candidates and (event.get("promptFeedback") or {}).get("blockReason"):
            out.append(self._chunk(0, {"role": "assistant"}, "content_filter"))
            self.finished = True
        for pos, cand in enumerate(candidates):
            index = cand.get("index", pos)
            for part in (cand.get("content") or {}).get("parts") or []:
                if part.get("thought"):
                    continue
                delta: dict[str, Any] = {}
                if index not in self._started:
                    self._started.add(index)
                    delta["role"] = "assistant"
                if "text" in part:
                    delta["content"] = part["text"]
                    out.append(self._chunk(index, delta))
                elif "functionCall" in part:
                    call = _tool_call(part["functionCall"])
                    tool_index = self._tool_index.get(index, 0)
                    self._tool_index[index] = tool_index + 1
                    self._has_calls.add(index)
                    head = {"index": tool_index, "id": call["id"], "type": "function"}
                    delta["tool_calls"] = [
                        {**head, "function": {"name": call["function"]["name"], "arguments": ""}}
                    ]
                    out.append(self._chunk(index, delta))
                    args = {"index": tool_index, "function": {"arguments": call["function"]["arguments"]}}
                    out.append(self._chunk(index, {"tool_calls": [args]}))
            reason = finish_reason(cand.get("finishReason"), index in self._has_calls)
            if reason is not None and cand.get("finishReason"):
                delta = {} if index in self._started else {"role": "assistant"}
                self._started.add(index)
                out.append(self._chunk(index, delta, reason))
                self.finished = True
        return out

    def usage_chunk(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "choices": [],
            "usage": (self.usage or Usage()).to_openai(),
        }


# ------------------------------------------------------------------ embeddings and images


def embedding_inputs(body: dict[str, Any]) -> list[str]:
    raw = body.get("input")
    items = raw if isinstance(raw, list) else [raw]
    if not items or not all(isinstance(i, str) and i for i in items):
        raise bad_request(
            "Google embedding models take text input (a string or an array of strings)", param="input"
        )
    return items


def batch_embed_request(model: str, body: dict[str, Any]) -> dict[str, Any]:
    """An OpenAI embeddings body -> a batchEmbedContents body."""
    requests = []
    for text in embedding_inputs(body):
        req: dict[str, Any] = {"model": f"models/{model}", "content": {"parts": [{"text": text}]}}
        if body.get("dimensions"):
            req["outputDimensionality"] = body["dimensions"]
        requests.append(req)
    return {"requests": requests}


def vertex_embed_request(body: dict[str, Any]) -> dict[str, Any]:
    """An OpenAI embeddings body -> a Vertex AI text-embedding `predict` body."""
    out: dict[str, Any] = {"instances": [{"content": text} for text in embedding_inputs(body)]}
    if body.get("dimensions"):
        out["parameters"] = {"outputDimensionality": body["dimensions"]}
    return out


def _encode_vector(values: list[float], encoding: Any) -> Any:
    if encoding == "base64":
        return base64.b64encode(struct.pack(f"<{len(values)}f", *values)).decode()
    return values


def embeddings_response(
    vectors: list[list[float]], model: str, prompt_tokens: int, encoding: Any
) -> dict[str, Any]:
    return {
        "object": "list",
        "model": model,
        "data": [
            {"object": "embedding", "index": i, "embedding": _encode_vector(v, encoding)}
            for i, v in enumerate(vectors)
        ],
        "usage": {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens},
    }


def batch_embed_vectors(data: dict[str, Any]) -> tuple[list[list[float]], int]:
    vectors = [e.get("values") or [] for e in data.get("embeddings") or []]
    tokens = int((data.get("usageMetadata") or {}).get("promptTokenCount") or 0)
    return vectors, tokens


def vertex_embed_vectors(data: dict[str, Any]) -> tuple[list[list[float]], int]:
    vectors: list[list[float]] = []
    tokens = 0
    for pred in data.get("predictions") or []:
        emb = pred.get("embeddings") or {}
        vectors.append(emb.get("values") or [])
        tokens += int((emb.get("statistics") or {}).get("token_count") or 0)
    return vectors, tokens


def imagen_request(body: dict[str, Any]) -> dict[str, Any]:
    """An OpenAI images body -> an Imagen `predict` body."""
    prompt = body.get("prompt")
    if not isinstance(prompt, str) or not prompt:
        raise bad_request("'prompt' must be a non-empty string", param="prompt")
    params: dict[str, Any] = {"sampleCount": int(body.get("n") or 1)}
    size = body.get("size")
    if size and size != "auto":
        if size not in _IMAGEN_ASPECT:
            raise bad_request(f"size {size!r} has no Imagen aspect ratio", param="size")
        params["aspectRatio"] = _IMAGEN_ASPECT[size]
    return {"instances": [{"prompt": prompt}], "parameters": params}


def imagen_response(data: dict[str, Any]) -> dict[str, Any]:
    images = [
        {"b64_json": p["bytesBase64Encoded"]}
        for p in data.get("predictions") or []
        if isinstance(p, dict) and p.get("bytesBase64Encoded")
    ]
    return {"created": int(time.time()), "data": images}
