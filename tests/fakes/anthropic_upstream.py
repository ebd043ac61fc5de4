"""A fake Anthropic Messages API on loopback, written from Anthropic's public API reference.

It validates requests the way the real API does (the checks a translation can get wrong):
`x-api-key` required (a bearer token alone is refused), `anthropic-version` required,
`model`/`max_tokens`/`messages` required, only `user`/`assistant` roles (a `system` role is
refused: the prompt goes in the top-level `system`), unknown top-level fields refused, tool
results must answer a `tool_use` of the previous assistant turn, image sources checked.

Answers: a `message` object (or the SSE sequence message_start, content_block_start, ping,
content_block_delta…, content_block_stop, message_delta, message_stop). A `thinking` request
gets a thinking block first; `cache_control` anywhere in the request is reported back as
cache-read tokens; with tools and no tool result yet it answers with `tool_use`.

`fake.script` steers it per request like the OpenAI fake: `{"status": 429, "retry_after": 3}`,
`{"status": 529}`, `{"error_event_after": 3}` (an `error` event mid-stream), `{"cut_after": 3}`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web

from tests.fakes.openai_upstream import Recorded

_TOP_LEVEL = {
    "model",
    "messages",
    "max_tokens",
    "system",
    "metadata",
    "stop_sequences",
    "stream",
    "temperature",
    "top_p",
    "top_k",
    "tools",
    "tool_choice",
    "thinking",
    "service_tier",
    "container",
    "mcp_servers",
}
_COUNT_FIELDS = {"model", "messages", "system", "tools", "tool_choice", "thinking", "mcp_servers"}
_BLOCK_TYPES = {"text", "image", "document", "tool_use", "tool_result", "thinking", "redacted_thinking"}
_MEDIA_TYPES = {"image/jpeg", "image/png", "image/gif", "image/webp"}
_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    429: "rate_limit_error",
    500: "api_error",
    529: "overloaded_error",
}


class Invalid(Exception):
    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


def error_response(status: int, message: str, headers: dict[str, str] | None = None) -> web.Response:
    body = {"type": "error", "error": {"type": _ERROR_TYPES.get(status, "api_error"), "message": message}}
    return web.json_response(body, status=status, headers=headers)


def _event(name: str, data: dict[str, Any]) -> bytes:
    return b"event: " + name.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"


def _has_cache_control(value: Any) -> bool:
    if isinstance(value, dict):
        return "cache_control" in value or any(_has_cache_control(v) for v in value.values())
    if isinstance(value, list):
        return any(_has_cache_control(v) for v in value)
    return False


@dataclass
class FakeAnthropic:
    api_key: str = "sk-ant-test-upstream"
    reply_text: str = "Hello from the fake Anthropic upstream."
    tool_use: dict[str, Any] | None = None  # {"name": ..., "input": {...}}: answer with it
    script: list[dict[str, Any]] = field(default_factory=list)
    requests: list[Recorded] = field(default_factory=list)
    sent_events: list[bytes] = field(default_factory=list)  # raw SSE events of the last stream
    runner: web.AppRunner | None = None
    port: int = 0

    @property
    def host_url(self) -> str:
        """A bare host: the gateway appends `/v1` itself."""
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> FakeAnthropic:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_post("/v1/messages", self.messages)
        app.router.add_post("/v1/messages/count_tokens", self.count_tokens)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        self.port = self.runner.addresses[0][1]
        return self

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()

    @property
    def last(self) -> Recorded:
        return self.requests[-1]

    # ---------------------------------------------------------------- validation

    def _check_headers(self, request: web.Request) -> None:
        key = request.headers.get("x-api-key")
        if not key:
            raise Invalid("x-api-key header is required", 401)
        if key != self.api_key and not key.startswith("sk-ant-"):
            raise Invalid("invalid x-api-key", 401)
        if not request.headers.get("anthropic-version"):
            raise Invalid("anthropic-version: header is required")

    def _check_body(self, body: Any, allowed: set[str], needs_max_tokens: bool) -> None:
        if not isinstance(body, dict):
            raise Invalid("request body must be a JSON object")
        extra = sorted(set(body) - allowed)
        if extra:
            raise Invalid(f"{extra[0]}: Extra inputs are not permitted")
        if not isinstance(body.get("model"), str) or not body["model"]:
            raise Invalid("model: Field required")
        if needs_max_tokens and (not isinstance(body.get("max_tokens"), int) or body["max_tokens"] < 1):
            raise Invalid("max_tokens: Field required")
        temperature = body.get("temperature")
        if temperature is not None and not 0 <= temperature <= 1:
            raise Invalid("temperature: Input should be less than or equal to 1")
        system = body.get("system")
        if system is not None and not isinstance(system, str):
            if not isinstance(system, list) or any(
                not isinstance(b, dict) or b.get("type") != "text" for b in system
            ):
                raise Invalid("system: Input should be a valid string or a list of text blocks")
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            raise Invalid("messages: Field required")
        previous_tool_ids: set[str] = set()
        for i, msg in enumerate(messages):
            role = msg.get("role") if isinstance(msg, dict) else None
            if role not in ("user", "assistant"):
                raise Invalid(
                    f'messages.{i}.role: Unexpected role "{role}". The Messages API accepts a top-level '
                    '`system` parameter, not "system" as an input message role.'
                )
            content = msg.get("content")
            if isinstance(content, str):
                if not content:
                    raise Invalid(f"messages.{i}: text content blocks must be non-empty")
                previous_tool_ids = set()
                continue
            if not isinstance(content, list) or not content:
                raise Invalid(f"messages.{i}.content: Input should be a valid string or list")
            tool_ids: set[str] = set()
            for j, block in enumerate(content):
                self._check_block(block, f"messages.{i}.content.{j}", role, previous_tool_ids)
                if block.get("type") == "tool_use":
                    tool_ids.add(block["id"])
            previous_tool_ids = tool_ids
        for tool in body.get("tools") or ():
            if not isinstance(tool, dict) or not tool.get("name") or "input_schema" not in tool:
                if not (isinstance(tool, dict) and tool.get("type")):  # server tools have a type
                    raise Invalid("tools: each tool needs a name and an input_schema")
        choice = body.get("tool_choice")
        if choice is not None and (
            not isinstance(choice, dict) or choice.get("type") not in ("auto", "any", "tool", "none")
        ):
            raise Invalid("tool_choice: Input tag does not match any of the expected tags")

    def _check_block(self, block: Any, where: str, role: str, tool_ids: set[str]) -> None:
        kind = block.get("type") if isinstance(block, dict) else None
        if kind not in _BLOCK_TYPES:
            raise Invalid(f"{where}.type: Input tag {kind!r} does not match any of the expected tags")
        if kind == "text" and not block.get("text"):
            raise Invalid(f"{where}: text content blocks must be non-empty")
        if kind == "image":
            source = block.get("source") or {}
            if source.get("type") == "base64":
                if source.get("media_type") not in _MEDIA_TYPES or not source.get("data"):
                    raise Invalid(f"{where}.source: invalid base64 image source")
            elif source.get("type") == "url":
                if not str(source.get("url", "")).startswith(("http://", "https://")):
                    raise Invalid(f"{where}.source.url: invalid url")
            else:
                raise Invalid(f"{where}.source: Input tag does not match any of the expected tags")
        if kind == "tool_use":
            if role != "assistant":
                raise Invalid(f"{where}: tool_use blocks are only allowed in assistant messages")
            if not block.get("id") or not block.get("name") or not isinstance(block.get("input"), dict):
                raise Invalid(f"{where}: tool_use needs id, name and an object input")
        if kind == "tool_result":
            if role != "user":
                raise Invalid(f"{where}: tool_result blocks are only allowed in user messages")
            if block.get("tool_use_id") not in tool_ids:
                raise Invalid(
                    f"{where}: unexpected `tool_use_id` found in `tool_result` blocks: "
                    f"{block.get('tool_use_id')}. Each `tool_result` block must have a corresponding "
                    "`tool_use` block in the previous message."
                )

    async def _read(self, request: web.Request) -> Recorded:
        raw = await request.read()
        try:
            body = orjson.loads(raw) if raw else None
        except orjson.JSONDecodeError:
            body = None
        rec = Recorded(request.method, request.path_qs, dict(request.headers), body, raw)
        self.requests.append(rec)
        return rec

    # ---------------------------------------------------------------- endpoints

    async def count_tokens(self, request: web.Request) -> web.StreamResponse:
        rec = await self._read(request)
        try:
            self._check_headers(request)
            self._check_body(rec.body, _COUNT_FIELDS, needs_max_tokens=False)
        except Invalid as exc:
            return error_response(exc.status, str(exc))
        words = len(orjson.dumps(rec.body["messages"]).split(b" "))
        return web.json_response({"input_tokens": 40 + words})

    async def messages(self, request: web.Request) -> web.StreamResponse:
        rec = await self._read(request)
        try:
            self._check_headers(request)
            self._check_body(rec.body, _TOP_LEVEL, needs_max_tokens=True)
        except Invalid as exc:
            return error_response(exc.status, str(exc))
        b = self.script.pop(0) if self.script else {}
        status = b.get("status")
        if status:
            headers = {"retry-after": str(b["retry_after"])} if "retry_after" in b else None
            return error_response(status, b.get("message", f"fake failure {status}"), headers)
        body = rec.body
        blocks = self._answer_blocks(body)
        stop = "tool_use" if any(bl["type"] == "tool_use" for bl in blocks) else "end_turn"
        usage = {
            "input_tokens": 21,
            "output_tokens": 9,
            "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": 5 if _has_cache_control(body) else 0,
        }
        message = {
            "id": "msg_01FakeAnthropic",
            "type": "message",
            "role": "assistant",
            "model": body["model"],
            "content": blocks,
            "stop_reason": stop,
            "stop_sequence": None,
            "usage": usage,
        }
        if not body.get("stream"):
            return web.json_response(message)
        return await self._stream(request, message, b)

    def _answer_blocks(self, body: dict[str, Any]) -> list[dict[str, Any]]:
        blocks: list[dict[str, Any]] = []
        thinking = body.get("thinking")
        if isinstance(thinking, dict) and thinking.get("type") == "enabled":
            blocks.append(
                {"type": "thinking", "thinking": "Let me think step by step.", "signature": "sig-fake-1"}
            )
        last = body["messages"][-1]
        answered_tool = isinstance(last.get("content"), list) and any(
            b.get("type") == "tool_result" for b in last["content"]
        )
        if self.tool_use is not None and body.get("tools") and not answered_tool:
            blocks.append(
                {
                    "type": "tool_use",
                    "id": "toolu_01FakeCall",
                    "name": self.tool_use["name"],
                    "input": self.tool_use["input"],
                }
            )
            return blocks
        forced = body.get("tool_choice") or {}
        if forced.get("type") == "tool" and not answered_tool:
            blocks.append(
                {
                    "type": "tool_use",
                    "id": "toolu_01Forced",
                    "name": forced["name"],
                    "input": {"answer": self.reply_text},
                }
            )
            return blocks
        blocks.append({"type": "text", "text": self.reply_text})
        return blocks

    async def _stream(
        self, request: web.Request, message: dict[str, Any], b: dict[str, Any]
    ) -> web.StreamResponse:
        start = {
            **message,
            "content": [],
            "stop_reason": None,
            "usage": {**message["usage"], "output_tokens": 1},
        }
        events = [_event("message_start", {"type": "message_start", "message": start})]
        for index, block in enumerate(message["content"]):
            if block["type"] == "text":
                first = {"type": "text", "text": ""}
                words = block["text"].split(" ")
                deltas = [
                    {"type": "text_delta", "text": w + (" " if i < len(words) - 1 else "")}
                    for i, w in enumerate(words)
                ]
            elif block["type"] == "thinking":
                first = {"type": "thinking", "thinking": "", "signature": ""}
                deltas = [
                    {"type": "thinking_delta", "thinking": block["thinking"]},
                    {"type": "signature_delta", "signature": block["signature"]},
                ]
            else:
                first = {**block, "input": {}}
                args = orjson.dumps(block["input"]).decode()
                half = len(args) // 2
                deltas = [
                    {"type": "input_json_delta", "partial_json": ""},
                    {"type": "input_json_delta", "partial_json": args[:half]},
                    {"type": "input_json_delta", "partial_json": args[half:]},
                ]
            events.append(
                _event(
                    "content_block_start",
                    {"type": "content_block_start", "index": index, "content_block": first},
                )
            )
            if index == 0:
                events.append(_event("ping", {"type": "ping"}))
            events += [
                _event("content_block_delta", {"type": "content_block_delta", "index": index, "delta": d})
                for d in deltas
            ]
            events.append(_event("content_block_stop", {"type": "content_block_stop", "index": index}))
        events.append(
            _event(
                "message_delta",
                {
                    "type": "message_delta",
                    "delta": {"stop_reason": message["stop_reason"], "stop_sequence": None},
                    "usage": {"output_tokens": message["usage"]["output_tokens"]},
                },
            )
        )
        events.append(_event("message_stop", {"type": "message_stop"}))
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        await resp.prepare(request)
        self.sent_events = []
        for i, event in enumerate(events):
            if "cut_after" in b and i >= b["cut_after"]:
                assert request.transport is not None
                request.transport.close()
                return resp
            if "error_event_after" in b and i >= b["error_event_after"]:
                error = {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}
                await resp.write(_event("error", error))
                break
            self.sent_events.append(event)
            await resp.write(event)
        await resp.write_eof()
        return resp
