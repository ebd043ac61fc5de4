"""A fuller fake OpenAI upstream for acceptance tests: FakeOpenAI plus the parts of the real
API the official SDK exercises by default and the base fake leaves out.

Wire facts it follows (OpenAI API reference):
- chat: `n` choices (index 0..n-1), `logprobs: true` + `top_logprobs` → `choices[].logprobs.content`
  entries `{token, logprob, bytes, top_logprobs}`.
- embeddings: `encoding_format: "base64"` answers each embedding as the base64 of little-endian
  float32 values; `dimensions` shortens the vector.
- images: `response_format: "b64_json"` answers `data[].b64_json`.
- `POST /v1/responses`: a `response` object (`output` of `message` items with `output_text`
  parts, `usage` with input/output/total tokens); streamed as typed SSE events
  (`event: response.created` … `response.output_text.delta` … `response.completed`), no [DONE].
- `POST /v1/audio/transcriptions`: multipart form (`file`, `model`, …) → `{"text": …}`.
- `GET /v1/models/{id}`: one model object, 404 in OpenAI's error shape for an unknown id.
"""

from __future__ import annotations

import base64
import struct
import time
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web

from tests.fakes.openai_upstream import FakeOpenAI

VECTOR = [0.25, -0.5, 0.75, 1.0, -1.0, 0.125, 0.0, 0.5]
PNG_BYTES = b"\x89PNG\r\n\x1a\nfake-image"
KNOWN_MODELS = ("gpt-4o-mini", "gpt-4o", "text-embedding-3-small", "whisper-1", "dall-e-3")


@dataclass
class FullFakeOpenAI(FakeOpenAI):
    name: str = "fake-openai-full"
    transcripts: list[dict[str, Any]] = field(default_factory=list)

    async def start(self, port: int = 0) -> FullFakeOpenAI:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_post("/v1/chat/completions", self.chat_full)
        app.router.add_post("/v1/completions", self.completions)
        app.router.add_post("/v1/embeddings", self.embeddings_full)
        app.router.add_post("/v1/images/generations", self.images_full)
        app.router.add_get("/v1/models", self.models_full)
        app.router.add_get("/v1/models/{model}", self.model_one)
        app.router.add_post("/v1/responses", self.responses)
        app.router.add_post("/v1/audio/transcriptions", self.transcriptions)
        app.router.add_route("*", "/v1/{tail:.*}", self.other)
        self.runner = web.AppRunner(app, handler_cancellation=True)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", port)
        await site.start()
        self.port = self.runner.addresses[0][1]
        return self

    # ---------------------------------------------------------------- chat: n and logprobs

    async def chat_full(self, request: web.Request) -> web.StreamResponse:
        body = orjson.loads(await request.read() or b"{}")
        n = body.get("n") or 1
        wants_logprobs = bool(body.get("logprobs"))
        if (n == 1 and not wants_logprobs) or body.get("stream"):
            return await self.chat(request)
        await self._record_body(request, body)
        b, early = await self._behaviour(request)
        if early is not None:
            return early
        choices = []
        for i in range(n):
            text = f"{self.reply_text} #{i}"
            logprobs = None
            if wants_logprobs:
                logprobs = {
                    "content": [
                        {
                            "token": word,
                            "logprob": -0.25 * (k + 1),
                            "bytes": list(word.encode()),
                            "top_logprobs": [
                                {"token": word, "logprob": -0.25 * (k + 1), "bytes": list(word.encode())}
                            ][: body.get("top_logprobs") or 0],
                        }
                        for k, word in enumerate(text.split(" "))
                    ],
                    "refusal": None,
                }
            choices.append(
                {
                    "index": i,
                    "message": {"role": "assistant", "content": text, "refusal": None},
                    "logprobs": logprobs,
                    "finish_reason": "stop",
                }
            )
        return web.json_response(
            {
                "id": "chatcmpl-full",
                "object": "chat.completion",
                "created": int(time.time()),
                "model": body["model"],
                "choices": choices,
                "usage": self._usage(12, 7 * n),
                "system_fingerprint": "fp_fake",
            }
        )

    async def _record_body(self, request: web.Request, body: dict[str, Any]) -> None:
        from tests.fakes.openai_upstream import Recorded

        if self.record:
            self.requests.append(
                Recorded(request.method, request.path_qs, dict(request.headers), body, orjson.dumps(body))
            )

    # ---------------------------------------------------------------- embeddings / images

    async def embeddings_full(self, request: web.Request) -> web.StreamResponse:
        rec = await self._record(request)
        body = rec.body or {}
        b, early = await self._behaviour(request)
        if early is not None:
            return early
        inputs = body.get("input")
        inputs = inputs if isinstance(inputs, list) else [inputs]
        vector = VECTOR[: body.get("dimensions") or len(VECTOR)]
        if body.get("encoding_format") == "base64":
            encoded: Any = base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()
        else:
            encoded = vector
        return web.json_response(
            {
                "object": "list",
                "model": body.get("model"),
                "data": [
                    {"object": "embedding", "index": i, "embedding": encoded} for i in range(len(inputs))
                ],
                "usage": {"prompt_tokens": 3 * len(inputs), "total_tokens": 3 * len(inputs)},
            }
        )

    async def images_full(self, request: web.Request) -> web.StreamResponse:
        rec = await self._record(request)
        body = rec.body or {}
        b, early = await self._behaviour(request)
        if early is not None:
            return early
        n = body.get("n") or 1
        if body.get("response_format") == "b64_json":
            item = {"b64_json": base64.b64encode(PNG_BYTES).decode(), "revised_prompt": body.get("prompt")}
        else:
            item = {"url": "https://example.invalid/cat.png", "revised_prompt": body.get("prompt")}
        return web.json_response({"created": int(time.time()), "data": [item] * n})

    # ---------------------------------------------------------------- models

    async def models_full(self, request: web.Request) -> web.StreamResponse:
        await self._record(request)
        return web.json_response(
            {
                "object": "list",
                "data": [
                    {"id": m, "object": "model", "created": 1, "owned_by": "openai"} for m in KNOWN_MODELS
                ],
            }
        )

    async def model_one(self, request: web.Request) -> web.StreamResponse:
        await self._record(request)
        model = request.match_info["model"]
        if model not in KNOWN_MODELS:
            return web.json_response(
                {
                    "error": {
                        "message": f"The model '{model}' does not exist",
                        "type": "invalid_request_error",
                        "param": "model",
                        "code": "model_not_found",
                    }
                },
                status=404,
            )
        return web.json_response({"id": model, "object": "model", "created": 1, "owned_by": "openai"})

    # ---------------------------------------------------------------- responses API

    def _response_object(self, body: dict[str, Any], status: str, text: str) -> dict[str, Any]:
        output = []
        if status == "completed":
            output = [
                {
                    "type": "message",
                    "id": "msg_fake1",
                    "status": "completed",
                    "role": "assistant",
                    "content": [{"type": "output_text", "text": text, "annotations": []}],
                }
            ]
        return {
            "id": "resp_fake1",
            "object": "response",
            "created_at": int(time.time()),
            "status": status,
            "model": body.get("model"),
            "output": output,
            "parallel_tool_calls": True,
            "tool_choice": "auto",
            "tools": [],
            "usage": (
                {
                    "input_tokens": 9,
                    "input_tokens_details": {"cached_tokens": 0},
                    "output_tokens": 4,
                    "output_tokens_details": {"reasoning_tokens": 0},
                    "total_tokens": 13,
                }
                if status == "completed"
                else None
            ),
        }

    async def responses(self, request: web.Request) -> web.StreamResponse:
        rec = await self._record(request)
        body = rec.body or {}
        if not body.get("model") or not body.get("input"):
            return web.json_response(
                {
                    "error": {
                        "message": "Invalid value for 'input': expected a non-empty string or array.",
                        "type": "invalid_request_error",
                        "param": "input",
                        "code": "missing_required_parameter",
                    }
                },
                status=400,
            )
        b, early = await self._behaviour(request)
        if early is not None:
            return early
        text = b.get("text", self.reply_text)
        if not body.get("stream"):
            return web.json_response(self._response_object(body, "completed", text))
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        seq = 0

        async def send(event: dict[str, Any]) -> None:
            nonlocal seq
            event["sequence_number"] = seq
            seq += 1
            await resp.write(f"event: {event['type']}\n".encode() + b"data: " + orjson.dumps(event) + b"\n\n")

        await send({"type": "response.created", "response": self._response_object(body, "in_progress", "")})
        item = {
            "type": "message",
            "id": "msg_fake1",
            "status": "in_progress",
            "role": "assistant",
            "content": [],
        }
        await send({"type": "response.output_item.added", "output_index": 0, "item": item})
        part = {"type": "output_text", "text": "", "annotations": []}
        await send(
            {
                "type": "response.content_part.added",
                "item_id": "msg_fake1",
                "output_index": 0,
                "content_index": 0,
                "part": part,
            }
        )
        for word in [w + " " for w in text.split(" ")[:-1]] + [text.split(" ")[-1]]:
            await send(
                {
                    "type": "response.output_text.delta",
                    "item_id": "msg_fake1",
                    "output_index": 0,
                    "content_index": 0,
                    "delta": word,
                }
            )
        await send(
            {
                "type": "response.output_text.done",
                "item_id": "msg_fake1",
                "output_index": 0,
                "content_index": 0,
                "text": text,
            }
        )
        await send({"type": "response.completed", "response": self._response_object(body, "completed", text)})
        await resp.write_eof()
        return resp

    # ---------------------------------------------------------------- audio

    async def transcriptions(self, request: web.Request) -> web.StreamResponse:
        headers = dict(request.headers)
        if not request.content_type.startswith("multipart/form-data"):
            return web.json_response(
                {"error": {"message": "expected multipart", "type": "invalid_request_error", "code": None}},
                status=400,
            )
        form = await request.post()
        upload = form.get("file")
        data = upload.file.read() if hasattr(upload, "file") else b""
        self.transcripts.append(
            {
                "model": form.get("model"),
                "filename": getattr(upload, "filename", None),
                "bytes": data,
                "authorization": headers.get("Authorization"),
            }
        )
        return web.json_response({"text": f"heard {len(data)} bytes"})
