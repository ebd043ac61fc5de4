"""A fake AI21 Studio (Jamba chat) on loopback, from AI21's chat request/response reference.

Validation like the real API: Bearer auth (401 otherwise), `content` must be a string
(Jamba takes text only; a list of parts is refused with 422), roles system/user/assistant/
tool, a tool message needs `tool_call_id`, `response_format.type` is text or json_object,
`stop` is a list, `max_tokens` at most 4096, unknown body fields are refused (422).
Streams end with `data: [DONE]`; usage is null on every chunk but the last. Tool-call
`arguments` come back as a JSON object (as the reference documents them).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web

_FIELDS = {
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


@dataclass
class FakeAI21:
    api_key: str = "ai21-test-key"
    reply_text: str = "Hello from fake Jamba."
    script: list[dict[str, Any]] = field(default_factory=list)
    requests: list[dict[str, Any]] = field(default_factory=list)
    runner: web.AppRunner | None = None
    port: int = 0

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> FakeAI21:
        app = web.Application()
        app.router.add_post("/studio/v1/chat/completions", self.chat)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        self.port = self.runner.addresses[0][1]
        return self

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()

    @staticmethod
    def _error(status: int, detail: str) -> web.Response:
        return web.json_response({"detail": detail}, status=status)

    def _invalid(self, body: Any) -> str | None:
        if not isinstance(body, dict):
            return "body must be a JSON object"
        unknown = set(body) - _FIELDS
        if unknown:
            return f"Extra inputs are not permitted: {sorted(unknown)[0]}"
        if not body.get("model") or not isinstance(body.get("messages"), list) or not body["messages"]:
            return "model and messages are required"
        for i, m in enumerate(body["messages"]):
            if m.get("role") not in ("system", "user", "assistant", "tool"):
                return f"messages.{i}.role: unsupported role {m.get('role')!r}"
            if not isinstance(m.get("content", ""), str):
                return f"messages.{i}.content: Input should be a valid string"
            if m["role"] == "tool" and not m.get("tool_call_id"):
                return f"messages.{i}.tool_call_id: Field required"
        fmt = body.get("response_format")
        if fmt is not None and fmt.get("type") not in ("text", "json_object"):
            return "response_format.type: Input should be 'text' or 'json_object'"
        if "stop" in body and not isinstance(body["stop"], list):
            return "stop: Input should be a valid list"
        if body.get("max_tokens", 0) > 4096:
            return "max_tokens: Input should be less than or equal to 4096"
        return None

    async def chat(self, request: web.Request) -> web.StreamResponse:
        if request.headers.get("Authorization") != f"Bearer {self.api_key}":
            return self._error(401, "Forbidden")
        try:
            body = orjson.loads(await request.read())
        except orjson.JSONDecodeError:
            return self._error(422, "body is not JSON")
        self.requests.append(body)
        problem = self._invalid(body)
        if problem:
            return self._error(422, problem)
        b = self.script.pop(0) if self.script else {}
        if b.get("status"):
            return self._error(b["status"], b.get("message", "fake failure"))
        use_tool = bool(body.get("tools")) and body["messages"][-1]["role"] != "tool"
        usage = {"prompt_tokens": 9, "completion_tokens": 5, "total_tokens": 14}
        created = int(time.time())
        call = {
            "id": "call_ai21_1",
            "type": "function",
            "function": {
                "name": body["tools"][0]["function"]["name"] if use_tool else "",
                "arguments": {"city": "Paris"},
            },
        }
        if not body.get("stream"):
            message: dict[str, Any] = {"role": "assistant", "content": None if use_tool else self.reply_text}
            if use_tool:
                message["tool_calls"] = [call]
            return web.json_response(
                {
                    "id": "chat-ai21-1",
                    "model": body["model"],
                    "created": created,
                    "choices": [
                        {
                            "index": 0,
                            "message": message,
                            "finish_reason": "tool_calls" if use_tool else "stop",
                        }
                    ],
                    "usage": usage,
                }
            )
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        base = {"id": "chat-ai21-1", "model": body["model"], "created": created}
        frames = [
            {
                **base,
                "choices": [{"index": 0, "delta": {"role": "assistant"}, "finish_reason": None}],
                "usage": None,
            }
        ]
        if use_tool:
            frames.append(
                {
                    **base,
                    "choices": [
                        {"index": 0, "delta": {"tool_calls": [{**call, "index": 0}]}, "finish_reason": None}
                    ],
                    "usage": None,
                }
            )
        else:
            words = self.reply_text.split(" ")
            for i, w in enumerate(words):
                frames.append(
                    {
                        **base,
                        "choices": [
                            {
                                "index": 0,
                                "delta": {"content": w if i == len(words) - 1 else w + " "},
                                "finish_reason": None,
                            }
                        ],
                        "usage": None,
                    }
                )
        frames.append(
            {
                **base,
                "choices": [{"index": 0, "delta": {}, "finish_reason": "tool_calls" if use_tool else "stop"}],
                "usage": usage,
            }
        )
        for frame in frames:
            await resp.write(b"data: " + orjson.dumps(frame) + b"\n\n")
        await resp.write(b"data: [DONE]\n\n")
        await resp.write_eof()
        return resp
