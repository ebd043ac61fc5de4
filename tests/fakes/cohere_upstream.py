"""A fake Cohere API v2 on loopback: `/v2/chat` (JSON and SSE) and `/v2/embed`.

Shapes follow Cohere's v2 reference: chat responses with `message.content[]`,
`message.tool_calls`, `finish_reason` (COMPLETE, MAX_TOKENS, TOOL_CALL ...) and
`usage.billed_units`/`usage.tokens`; streams of typed events (message-start, content-start,
content-delta, content-end, tool-plan-delta, tool-call-start/-delta/-end, message-end with
usage); embed responses with `embeddings.float`; errors as `{"id", "message"}`.

Validation mirrors the real API: bearer auth, `model` and `messages` required, unknown
fields rejected (OpenAI's `top_p`/`stop`/`n` are not Cohere fields), roles limited to
system/user/assistant/tool, a tool message must answer a tool call the assistant made,
`embedding_types` and (for v3+ models) `input_type` required on embed.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web

from tests.fakes.openai_upstream import Recorded

_CHAT_FIELDS = {
    "model",
    "messages",
    "stream",
    "tools",
    "documents",
    "citation_options",
    "response_format",
    "safety_mode",
    "max_tokens",
    "stop_sequences",
    "temperature",
    "seed",
    "frequency_penalty",
    "presence_penalty",
    "k",
    "p",
    "logprobs",
    "tool_choice",
    "strict_tools",
    "thinking",
}
_EMBED_FIELDS = {
    "model",
    "texts",
    "images",
    "inputs",
    "input_type",
    "embedding_types",
    "output_dimension",
    "truncate",
    "max_tokens",
}


class Invalid(Exception):
    pass


def cohere_error(status: int, message: str, headers: dict[str, str] | None = None) -> web.Response:
    return web.json_response({"id": "err-fake", "message": message}, status=status, headers=headers)


def validate_chat(body: Any) -> None:
    if not isinstance(body, dict):
        raise Invalid("invalid request: body must be a JSON object")
    unknown = sorted(set(body) - _CHAT_FIELDS)
    if unknown:
        raise Invalid(f"invalid request: unknown field: parameter {unknown[0]} is not a valid field")
    if not body.get("model"):
        raise Invalid("invalid request: model must be specified")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise Invalid("invalid request: messages must not be empty")
    call_ids: set[str] = set()
    for i, msg in enumerate(messages):
        role = msg.get("role")
        if role not in ("system", "user", "assistant", "tool"):
            raise Invalid(f"invalid request: messages[{i}].role must be one of system, user, assistant, tool")
        if role == "assistant" and msg.get("tool_calls"):
            for call in msg["tool_calls"]:
                if not isinstance((call.get("function") or {}).get("arguments"), str):
                    raise Invalid("invalid request: tool_calls[].function.arguments must be a JSON string")
                call_ids.add(call.get("id"))
        if role == "tool" and msg.get("tool_call_id") not in call_ids:
            raise Invalid(f"invalid request: messages[{i}].tool_call_id does not match any tool call")
        content = msg.get("content")
        if isinstance(content, list):
            for part in content:
                if part.get("type") == "image_url":
                    url = (part.get("image_url") or {}).get("url", "")
                    if not url.startswith(("data:image/", "http://", "https://")):
                        raise Invalid("invalid request: image_url.url must be a data URL or an http(s) URL")
                elif part.get("type") not in ("text", "document"):
                    raise Invalid(f"invalid request: unsupported content type {part.get('type')!r}")
    if body.get("tool_choice") not in (None, "REQUIRED", "NONE"):
        raise Invalid("invalid request: tool_choice must be REQUIRED or NONE")
    if body.get("tool_choice") and not body.get("tools"):
        raise Invalid("invalid request: tool_choice requires tools")
    fmt = body.get("response_format")
    if fmt is not None and fmt.get("type") not in ("text", "json_object"):
        raise Invalid("invalid request: response_format.type must be text or json_object")


@dataclass
class FakeCohere:
    api_key: str = "fake-cohere-key"
    reply_text: str = "Hello from Command."
    tool_call: dict[str, Any] | None = None  # {"name": ..., "arguments": "<json>"} when tools are sent
    script: list[dict[str, Any]] = field(default_factory=list)
    requests: list[Recorded] = field(default_factory=list)
    runner: web.AppRunner | None = None
    port: int = 0

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> FakeCohere:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_post("/v2/chat", self.chat)
        app.router.add_post("/v2/embed", self.embed)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        self.port = self.runner.addresses[0][1]
        return self

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()

    async def _record(self, request: web.Request) -> tuple[Recorded, dict[str, Any], web.Response | None]:
        raw = await request.read()
        try:
            body = orjson.loads(raw) if raw else None
        except orjson.JSONDecodeError:
            body = None
        rec = Recorded(request.method, request.path_qs, dict(request.headers), body, raw)
        self.requests.append(rec)
        if request.headers.get("Authorization") != f"Bearer {self.api_key}":
            return rec, {}, cohere_error(401, "invalid api token")
        behaviour = self.script.pop(0) if self.script else {}
        if behaviour.get("status"):
            headers = {"Retry-After": str(behaviour["retry_after"])} if "retry_after" in behaviour else None
            return (
                rec,
                behaviour,
                cohere_error(behaviour["status"], behaviour.get("message", "fake failure"), headers),
            )
        return rec, behaviour, None

    def _usage(self) -> dict[str, Any]:
        return {
            "billed_units": {"input_tokens": 9, "output_tokens": 6},
            "tokens": {"input_tokens": 120, "output_tokens": 6},
        }

    async def chat(self, request: web.Request) -> web.StreamResponse:
        rec, behaviour, early = await self._record(request)
        if early is not None:
            return early
        try:
            validate_chat(rec.body)
        except Invalid as exc:
            return cohere_error(400, str(exc))
        body = rec.body
        wants_tool = self.tool_call and body.get("tools") and body["messages"][-1]["role"] != "tool"
        if not body.get("stream"):
            if wants_tool:
                message = {
                    "role": "assistant",
                    "tool_plan": "I will look this up.",
                    "tool_calls": [
                        {"id": "get_weather_abc123", "type": "function", "function": dict(self.tool_call)}
                    ],
                }
                finish = "TOOL_CALL"
            else:
                message = {"role": "assistant", "content": [{"type": "text", "text": self.reply_text}]}
                finish = behaviour.get("finish", "COMPLETE")
            return web.json_response(
                {"id": "c0ffee", "finish_reason": finish, "message": message, "usage": self._usage()}
            )
        events: list[dict[str, Any]] = [
            {
                "type": "message-start",
                "id": "c0ffee",
                "delta": {
                    "message": {
                        "role": "assistant",
                        "content": [],
                        "tool_plan": "",
                        "tool_calls": [],
                        "citations": [],
                    }
                },
            }
        ]
        if wants_tool:
            args = self.tool_call["arguments"]
            events += [
                {"type": "tool-plan-delta", "delta": {"message": {"tool_plan": "I will look this up."}}},
                {
                    "type": "tool-call-start",
                    "index": 0,
                    "delta": {
                        "message": {
                            "tool_calls": {
                                "id": "get_weather_abc123",
                                "type": "function",
                                "function": {"name": self.tool_call["name"], "arguments": ""},
                            }
                        }
                    },
                },
            ]
            for piece in (args[: len(args) // 2], args[len(args) // 2 :]):
                events.append(
                    {
                        "type": "tool-call-delta",
                        "index": 0,
                        "delta": {"message": {"tool_calls": {"function": {"arguments": piece}}}},
                    }
                )
            events.append({"type": "tool-call-end", "index": 0})
            finish = "TOOL_CALL"
        else:
            events.append(
                {
                    "type": "content-start",
                    "index": 0,
                    "delta": {"message": {"content": {"type": "text", "text": ""}}},
                }
            )
            words = self.reply_text.split(" ")
            for piece in [w + " " for w in words[:-1]] + [words[-1]]:
                events.append(
                    {"type": "content-delta", "index": 0, "delta": {"message": {"content": {"text": piece}}}}
                )
            events.append({"type": "content-end", "index": 0})
            finish = behaviour.get("finish", "COMPLETE")
        events.append({"type": "message-end", "delta": {"finish_reason": finish, "usage": self._usage()}})
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        cut_after = behaviour.get("cut_after")
        for i, event in enumerate(events):
            if cut_after is not None and i >= cut_after:
                break
            await resp.write(f"event: {event['type']}\n".encode() + b"data: " + orjson.dumps(event) + b"\n\n")
            await asyncio.sleep(0)
        await resp.write_eof()
        return resp

    async def embed(self, request: web.Request) -> web.StreamResponse:
        rec, _, early = await self._record(request)
        if early is not None:
            return early
        body = rec.body if isinstance(rec.body, dict) else {}
        unknown = sorted(set(body) - _EMBED_FIELDS)
        if unknown:
            return cohere_error(
                400, f"invalid request: unknown field: parameter {unknown[0]} is not a valid field"
            )
        if not body.get("model") or not body.get("embedding_types"):
            return cohere_error(400, "invalid request: model and embedding_types are required")
        if body["model"].startswith("embed-") and not body.get("input_type"):
            return cohere_error(400, "invalid request: input_type is required for embed models v3 and higher")
        texts = body.get("texts") or []
        if not texts or len(texts) > 96:
            return cohere_error(400, "invalid request: texts must hold 1 to 96 strings")
        dims = int(body.get("output_dimension") or 3)
        vectors = [[round(0.1 * (i + 1) * (k + 1), 4) for k in range(dims)] for i in range(len(texts))]
        return web.json_response(
            {
                "id": "emb-fake",
                "texts": texts,
                "embeddings": {"float": vectors},
                "meta": {"api_version": {"version": "2"}, "billed_units": {"input_tokens": 2 * len(texts)}},
                "response_type": "embeddings_by_type",
            }
        )
