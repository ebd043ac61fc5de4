"""A fake OpenAI-compatible model for tool loops, speaking the real chat.completions wire
format (JSON and `data:`-framed SSE ending in `data: [DONE]`, tool-call deltas, the usage
chunk only when `stream_options.include_usage` is set).

It asks for the tool calls in `wants` (each `(name, arguments)`) when every one of those
tools was offered and no `tool` message answers them yet (or always, with `repeat=True`);
otherwise it answers with text that quotes every `tool` message it was sent, so a test can
see that the tool results reached the model. Every request body is kept in `bodies`.

`gate`: when set, a streamed final answer stops after its first word until the test sets
the event — proof that the gateway passes words on as they come instead of buffering.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web

USAGE = {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15}


@dataclass
class ToolModel:
    wants: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    repeat: bool = False
    preamble: str = ""  # content streamed before the tool calls of a tool turn
    gate: asyncio.Event | None = None
    bodies: list[dict[str, Any]] = field(default_factory=list)
    port: int = 0
    _runner: web.AppRunner | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    async def start(self) -> ToolModel:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self.chat)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = self._runner.addresses[0][1]
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    def offered(self, i: int = -1) -> list[str]:
        return [t["function"]["name"] for t in self.bodies[i].get("tools") or []]

    def _answer(self, body: dict[str, Any]) -> tuple[str, list[dict[str, Any]]]:
        messages = body["messages"]
        offered = {t["function"]["name"] for t in body.get("tools") or []}
        answered = any(m.get("role") == "tool" for m in messages)
        turn = sum(1 for m in messages if m.get("role") == "assistant" and m.get("tool_calls"))
        if self.wants and all(n in offered for n, _ in self.wants) and (self.repeat or not answered):
            calls = [
                {
                    "id": f"call_{turn}_{i}",
                    "type": "function",
                    "function": {"name": name, "arguments": orjson.dumps(args).decode()},
                }
                for i, (name, args) in enumerate(self.wants)
            ]
            return self.preamble, calls
        results = [str(m.get("content")) for m in messages if m.get("role") == "tool"]
        return "The tools said: " + " | ".join(results) if results else "No tools were needed.", []

    async def chat(self, request: web.Request) -> web.StreamResponse:
        body = orjson.loads(await request.read())
        self.bodies.append(body)
        text, calls = self._answer(body)
        base = {"id": f"chatcmpl-{len(self.bodies)}", "created": int(time.time()), "model": body["model"]}
        finish = "tool_calls" if calls else "stop"
        if not body.get("stream"):
            message: dict[str, Any] = {"role": "assistant", "content": text or None}
            if calls:
                message["tool_calls"] = calls
            return web.json_response(
                {
                    **base,
                    "object": "chat.completion",
                    "choices": [{"index": 0, "message": message, "finish_reason": finish, "logprobs": None}],
                    "usage": USAGE,
                }
            )
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        chunk = {**base, "object": "chat.completion.chunk"}

        async def send(delta: dict[str, Any], finish_reason: str | None = None) -> None:
            frame = {**chunk, "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}]}
            await resp.write(b"data: " + orjson.dumps(frame) + b"\n\n")

        await send({"role": "assistant", "content": ""})
        words = text.split(" ") if text else []
        for i, word in enumerate(words):
            await send({"content": word if i == 0 else " " + word})
            if i == 0 and not calls and self.gate is not None:
                await self.gate.wait()
        for index, call in enumerate(calls):
            args = call["function"]["arguments"]
            head = {"index": index, "id": call["id"], "type": "function"}
            await send(
                {"tool_calls": [{**head, "function": {"name": call["function"]["name"], "arguments": ""}}]}
            )
            for part in (args[: len(args) // 2], args[len(args) // 2 :]):
                await send({"tool_calls": [{"index": index, "function": {"arguments": part}}]})
        await send({}, finish)
        if (body.get("stream_options") or {}).get("include_usage"):
            frame = {**chunk, "choices": [], "usage": USAGE}
            await resp.write(b"data: " + orjson.dumps(frame) + b"\n\n")
        await resp.write(b"data: [DONE]\n\n")
        await resp.write_eof()
        return resp
