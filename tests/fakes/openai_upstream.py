"""A fake OpenAI-compatible upstream on loopback that speaks the real wire format.

Shapes follow OpenAI's API reference: chat.completion / chat.completion.chunk objects,
`data: [DONE]` terminated SSE, the final usage chunk (empty `choices`) only when
`stream_options.include_usage` is true, `{"error": {...}}` bodies for errors.

Tests steer it through `fake.script`: a list of behaviours consumed one per request
(`{"status": 500}`, `{"status": 429, "retry_after": 2}`, `{"stall": 5}`, `{"reset": True}`,
`{"cut_after": 2}` for a stream that stops halfway, `{"chunk_delay": 0.5}` between stream
frames, `{"ttft": 3}` between a stream's headers and its first frame); an empty script means
"answer normally".
Every request is recorded in `fake.requests`.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web


@dataclass
class Recorded:
    method: str
    path: str
    headers: dict[str, str]
    body: Any
    raw: bytes


@dataclass
class FakeOpenAI:
    name: str = "fake-openai"
    reply_text: str = "Hello from the fake upstream."
    latency: float = 0.0
    script: list[dict[str, Any]] = field(default_factory=list)
    requests: list[Recorded] = field(default_factory=list)
    runner: web.AppRunner | None = None
    port: int = 0
    cancelled: int = 0
    tool_call: dict[str, Any] | None = None  # answer with this tool call when tools are sent
    record: bool = True  # keep every request (off for benchmarks)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    async def start(self, port: int = 0) -> FakeOpenAI:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_post("/v1/chat/completions", self.chat)
        app.router.add_post("/v1/completions", self.completions)
        app.router.add_post("/v1/embeddings", self.embeddings)
        app.router.add_post("/v1/images/generations", self.images)
        app.router.add_get("/v1/models", self.models)
        app.router.add_route("*", "/v1/{tail:.*}", self.other)
        self.runner = web.AppRunner(app, handler_cancellation=True)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", port)
        await site.start()
        self.port = self.runner.addresses[0][1]
        return self

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()

    # ---------------------------------------------------------------- helpers

    async def _record(self, request: web.Request) -> Recorded:
        raw = await request.read()
        try:
            body = orjson.loads(raw) if raw else None
        except orjson.JSONDecodeError:
            body = None
        rec = Recorded(request.method, request.path_qs, dict(request.headers), body, raw)
        if self.record:
            self.requests.append(rec)
        return rec

    async def _behaviour(self, request: web.Request) -> tuple[dict[str, Any], web.StreamResponse | None]:
        b = self.script.pop(0) if self.script else {}
        if self.latency:
            await asyncio.sleep(self.latency)
        if b.get("stall"):
            try:
                await asyncio.sleep(b["stall"])
            except asyncio.CancelledError:
                self.cancelled += 1
                raise
        if b.get("reset"):
            assert request.transport is not None
            request.transport.close()
            return b, web.Response(status=500)
        status = b.get("status")
        if status and status >= 400:
            headers = {}
            if "retry_after" in b:
                headers["Retry-After"] = str(b["retry_after"])
            err_type = {400: "invalid_request_error", 401: "invalid_api_key", 429: "rate_limit_exceeded"}.get(
                status, "server_error"
            )
            body = {
                "error": {
                    "message": b.get("message", f"fake failure {status}"),
                    "type": err_type,
                    "param": None,
                    "code": err_type,
                }
            }
            return b, web.json_response(body, status=status, headers=headers)
        return b, None

    def _usage(self, prompt: int = 12, completion: int = 7) -> dict[str, Any]:
        return {
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion,
            "prompt_tokens_details": {"cached_tokens": 0},
            "completion_tokens_details": {"reasoning_tokens": 0},
        }

    # ---------------------------------------------------------------- endpoints

    async def chat(self, request: web.Request) -> web.StreamResponse:
        rec = await self._record(request)
        body = rec.body or {}
        if not isinstance(body.get("messages"), list) or not body.get("model"):
            return web.json_response(
                {
                    "error": {
                        "message": "messages and model are required",
                        "type": "invalid_request_error",
                        "param": "messages",
                        "code": None,
                    }
                },
                status=400,
            )
        b, early = await self._behaviour(request)
        if early is not None:
            return early
        model = body["model"]
        created = int(time.time())
        use_tool = (
            self.tool_call is not None
            and body.get("tools")
            and not any(m.get("role") == "tool" for m in body["messages"])
        )
        text = b.get("text", self.reply_text)
        if not body.get("stream"):
            message: dict[str, Any] = {
                "role": "assistant",
                "content": None if use_tool else text,
                "refusal": None,
            }
            finish = "stop"
            if use_tool:
                message["tool_calls"] = [self.tool_call]
                finish = "tool_calls"
            return web.json_response(
                {
                    "id": "chatcmpl-fake123",
                    "object": "chat.completion",
                    "created": created,
                    "model": model,
                    "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": finish}],
                    "usage": self._usage(),
                    "system_fingerprint": "fp_fake",
                }
            )
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        base = {
            "id": "chatcmpl-fake123",
            "object": "chat.completion.chunk",
            "created": created,
            "model": model,
            "system_fingerprint": "fp_fake",
        }
        pieces = [w + " " for w in text.split(" ")]
        pieces[-1] = pieces[-1].rstrip()
        frames = [
            {
                **base,
                "choices": [
                    {
                        "index": 0,
                        "delta": {"role": "assistant", "content": ""},
                        "logprobs": None,
                        "finish_reason": None,
                    }
                ],
            }
        ]
        if use_tool:
            call = self.tool_call
            assert call is not None
            frames.append(
                {
                    **base,
                    "choices": [
                        {
                            "index": 0,
                            "delta": {
                                "tool_calls": [
                                    {
                                        "index": 0,
                                        "id": call["id"],
                                        "type": "function",
                                        "function": {"name": call["function"]["name"], "arguments": ""},
                                    }
                                ]
                            },
                            "finish_reason": None,
                        }
                    ],
                }
            )
            args = call["function"]["arguments"]
            for part in (args[: len(args) // 2], args[len(args) // 2 :]):
                frames.append(
                    {
                        **base,
                        "choices": [
                            {
                                "index": 0,
                                "delta": {"tool_calls": [{"index": 0, "function": {"arguments": part}}]},
                                "finish_reason": None,
                            }
                        ],
                    }
                )
            finish = "tool_calls"
        else:
            for piece in pieces:
                frames.append(
                    {
                        **base,
                        "choices": [
                            {"index": 0, "delta": {"content": piece}, "logprobs": None, "finish_reason": None}
                        ],
                    }
                )
            finish = "stop"
        frames.append(
            {**base, "choices": [{"index": 0, "delta": {}, "logprobs": None, "finish_reason": finish}]}
        )
        opts = body.get("stream_options") or {}
        if opts.get("include_usage"):
            frames.append({**base, "choices": [], "usage": self._usage()})
        cut_after = b.get("cut_after")
        delay = b.get("chunk_delay", 0)
        try:
            if b.get("ttft"):  # headers at once, the first token later (a reasoning model)
                await asyncio.sleep(b["ttft"])
            for i, frame in enumerate(frames):
                if cut_after is not None and i >= cut_after:
                    assert request.transport is not None
                    request.transport.close()
                    return resp
                await resp.write(b"data: " + orjson.dumps(frame) + b"\n\n")
                if delay:
                    await asyncio.sleep(delay)
            await resp.write(b"data: [DONE]\n\n")
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        await resp.write_eof()
        return resp

    async def completions(self, request: web.Request) -> web.StreamResponse:
        rec = await self._record(request)
        body = rec.body or {}
        b, early = await self._behaviour(request)
        if early is not None:
            return early
        created = int(time.time())
        if body.get("stream"):
            resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
            await resp.prepare(request)
            for piece in ("Once", " upon", " a time"):
                await resp.write(
                    b"data: "
                    + orjson.dumps(
                        {
                            "id": "cmpl-fake",
                            "object": "text_completion",
                            "created": created,
                            "model": body["model"],
                            "choices": [{"text": piece, "index": 0, "logprobs": None, "finish_reason": None}],
                        }
                    )
                    + b"\n\n"
                )
            if (body.get("stream_options") or {}).get("include_usage"):
                await resp.write(
                    b"data: "
                    + orjson.dumps(
                        {
                            "id": "cmpl-fake",
                            "object": "text_completion",
                            "created": created,
                            "model": body["model"],
                            "choices": [],
                            "usage": self._usage(5, 3),
                        }
                    )
                    + b"\n\n"
                )
            await resp.write(b"data: [DONE]\n\n")
            return resp
        return web.json_response(
            {
                "id": "cmpl-fake",
                "object": "text_completion",
                "created": created,
                "model": body["model"],
                "choices": [
                    {"text": "Once upon a time", "index": 0, "logprobs": None, "finish_reason": "stop"}
                ],
                "usage": self._usage(5, 4),
            }
        )

    async def embeddings(self, request: web.Request) -> web.StreamResponse:
        rec = await self._record(request)
        body = rec.body or {}
        b, early = await self._behaviour(request)
        if early is not None:
            return early
        inputs = body.get("input")
        inputs = inputs if isinstance(inputs, list) else [inputs]
        return web.json_response(
            {
                "object": "list",
                "model": body.get("model"),
                "data": [
                    {"object": "embedding", "index": i, "embedding": [0.1, -0.2, 0.3]}
                    for i in range(len(inputs))
                ],
                "usage": {"prompt_tokens": 3 * len(inputs), "total_tokens": 3 * len(inputs)},
            }
        )

    async def images(self, request: web.Request) -> web.StreamResponse:
        await self._record(request)
        b, early = await self._behaviour(request)
        if early is not None:
            return early
        return web.json_response(
            {
                "created": int(time.time()),
                "data": [{"url": "https://example.invalid/cat.png", "revised_prompt": "a cat"}],
            }
        )

    async def models(self, request: web.Request) -> web.StreamResponse:
        await self._record(request)
        return web.json_response(
            {
                "object": "list",
                "data": [{"id": "gpt-4o-mini", "object": "model", "created": 1, "owned_by": "openai"}],
            }
        )

    async def other(self, request: web.Request) -> web.StreamResponse:
        rec = await self._record(request)
        b, early = await self._behaviour(request)
        if early is not None:
            return early
        return web.json_response(
            {"object": "passthrough", "path": request.path, "method": request.method, "echo": rec.body}
        )
