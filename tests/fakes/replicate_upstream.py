"""A fake Replicate API on loopback.

Shapes follow Replicate's HTTP API reference: `POST /v1/models/{owner}/{name}/predictions`
and `POST /v1/predictions` (with `version`) create a prediction object (`id`, `model`,
`version`, `input`, `output`, `error`, `status` starting|processing|succeeded|failed|canceled,
`urls.get`/`urls.stream`/`urls.cancel`, `metrics` with token counts); `Prefer: wait` holds
the answer until the prediction finishes; `GET /v1/predictions/{id}` polls it; the stream URL
serves SSE events `output` (a text piece), `error` and `done`. Errors are problem details
(`{"title", "detail", "status", "invalid_fields"}`).

Validation mirrors the model schemas: language models need a string `prompt` and take
`stop_sequences` as one string; image models need `prompt`; a bad token is a 401.
`fake.script` steers the next prediction: `{"slow": 2}` (still processing for two polls),
`{"fail": "msg"}`, `{"status": 429}`, `{"stream_error": "msg"}`, `{"cut_after": 1}`,
`{"hold": True}` (the stream pauses after its first piece until `fake.release` is set).
`POST /v1/predictions/{id}/cancel` cancels; `fake.canceled` lists the ids.
"""

from __future__ import annotations

import asyncio
import itertools
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web

from tests.fakes.gemini_upstream import TINY_PNG_B64
from tests.fakes.openai_upstream import Recorded

LANGUAGE_MODELS = {"meta/meta-llama-3-8b-instruct", "meta/meta-llama-3-70b-instruct", "yorickvp/llava-13b"}
IMAGE_MODELS = {"black-forest-labs/flux-schnell"}
VERSIONS = {"5a6809ca6288247d06daf6365557e5e429063f32a21146b2a807c682652136b8": "yorickvp/llava-13b"}
_LLM_TYPES = {
    "prompt": str,
    "system_prompt": str,
    "max_tokens": int,
    "temperature": (int, float),
    "top_p": (int, float),
    "seed": int,
    "stop_sequences": str,
    "presence_penalty": (int, float),
    "frequency_penalty": (int, float),
    "image": str,
}


def problem(
    status: int,
    detail: str,
    invalid: list[dict[str, str]] | None = None,
    headers: dict[str, str] | None = None,
) -> web.Response:
    body: dict[str, Any] = {
        "title": {
            401: "Unauthenticated",
            404: "Not found",
            422: "Input validation failed",
            429: "Request was throttled",
        }.get(status, "Error"),
        "detail": detail,
        "status": status,
    }
    if invalid:
        body["invalid_fields"] = invalid
    return web.json_response(body, status=status, headers=headers, content_type="application/problem+json")


@dataclass
class Prediction:
    data: dict[str, Any]
    pieces: list[str]
    polls_left: int = 0
    stream_error: str | None = None
    cut_after: int | None = None
    hold: bool = False


@dataclass
class FakeReplicate:
    api_token: str = "r8_fake_token"
    reply_text: str = "Hello from Llama."
    script: list[dict[str, Any]] = field(default_factory=list)
    requests: list[Recorded] = field(default_factory=list)
    predictions: dict[str, Prediction] = field(default_factory=dict)
    runner: web.AppRunner | None = None
    port: int = 0
    canceled: list[str] = field(default_factory=list)
    release: asyncio.Event = field(default_factory=asyncio.Event)
    _ids: Any = field(default_factory=lambda: itertools.count(1))

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> FakeReplicate:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_post("/v1/models/{owner}/{name}/predictions", self.create_for_model)
        app.router.add_post("/v1/predictions", self.create_for_version)
        app.router.add_get("/v1/predictions/{id}", self.get)
        app.router.add_post("/v1/predictions/{id}/cancel", self.cancel)
        app.router.add_get("/stream/{id}", self.stream)
        app.router.add_get("/files/{id}/{file}", self.file)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        self.port = self.runner.addresses[0][1]
        return self

    async def stop(self) -> None:
        self.release.set()
        if self.runner is not None:
            await self.runner.cleanup()

    async def _record(self, request: web.Request) -> Recorded:
        raw = await request.read()
        try:
            body = orjson.loads(raw) if raw else None
        except orjson.JSONDecodeError:
            body = None
        rec = Recorded(request.method, request.path_qs, dict(request.headers), body, raw)
        self.requests.append(rec)
        return rec

    def _authorized(self, request: web.Request) -> bool:
        return request.headers.get("Authorization") == f"Bearer {self.api_token}"

    async def create_for_model(self, request: web.Request) -> web.Response:
        rec = await self._record(request)
        model = f"{request.match_info['owner']}/{request.match_info['name']}"
        return await self._create(request, rec, model, "dp-" + "0" * 8)

    async def create_for_version(self, request: web.Request) -> web.Response:
        rec = await self._record(request)
        version = (rec.body or {}).get("version") if isinstance(rec.body, dict) else None
        if version not in VERSIONS:
            return problem(
                422,
                "Invalid version or not permitted",
                [{"field": "version", "description": "version does not exist"}],
            )
        return await self._create(request, rec, VERSIONS[version], version)

    async def _create(self, request: web.Request, rec: Recorded, model: str, version: str) -> web.Response:
        if not self._authorized(request):
            return problem(401, "You did not pass a valid authentication token")
        if model not in LANGUAGE_MODELS | IMAGE_MODELS:
            return problem(404, "The requested resource could not be found.")
        body = rec.body if isinstance(rec.body, dict) else {}
        behaviour = self.script.pop(0) if self.script else {}
        if behaviour.get("status"):
            headers = {"Retry-After": str(behaviour["retry_after"])} if "retry_after" in behaviour else None
            return problem(behaviour["status"], behaviour.get("detail", "fake failure"), headers=headers)
        inp = body.get("input")
        if not isinstance(inp, dict):
            return problem(
                422, "Input validation failed", [{"field": "input", "description": "input is required"}]
            )
        invalid = []
        if not isinstance(inp.get("prompt"), str) or not inp["prompt"]:
            invalid.append({"field": "input.prompt", "description": "prompt is required"})
        if model in LANGUAGE_MODELS:
            for key, kind in _LLM_TYPES.items():
                if key in inp and not isinstance(inp[key], kind):
                    invalid.append({"field": f"input.{key}", "description": f"{key}: Invalid type."})
        if invalid:
            return problem(422, "Input validation failed", invalid)
        pid = f"pred{next(self._ids):04d}"
        base = self.base_url
        data: dict[str, Any] = {
            "id": pid,
            "model": model,
            "version": version,
            "input": inp,
            "logs": "",
            "output": None,
            "data_removed": False,
            "error": None,
            "status": "starting",
            "created_at": "2026-01-01T00:00:00.000Z",
            "urls": {
                "cancel": f"{base}/v1/predictions/{pid}/cancel",
                "get": f"{base}/v1/predictions/{pid}",
                "web": f"https://replicate.com/p/{pid}",
            },
        }
        if model in LANGUAGE_MODELS:
            data["urls"]["stream"] = f"{base}/stream/{pid}"
            words = self.reply_text.split(" ")
            pieces = [w + " " for w in words[:-1]] + [words[-1]]
        else:
            count = int(inp.get("num_outputs") or 1)
            pieces = [f"{base}/files/{pid}/out-{i}.png" for i in range(count)]
        pred = Prediction(
            data,
            pieces,
            int(behaviour.get("slow", 0)),
            behaviour.get("stream_error"),
            behaviour.get("cut_after"),
            bool(behaviour.get("hold")),
        )
        if behaviour.get("fail"):
            data.update(status="failed", error=behaviour["fail"])
        self.predictions[pid] = pred
        if request.headers.get("Prefer", "").startswith("wait") and data["status"] != "failed":
            if pred.polls_left:
                data["status"] = "processing"
            else:
                self._succeed(pred)
        return web.json_response(data, status=201)

    def _succeed(self, pred: Prediction) -> None:
        model = pred.data["model"]
        pred.data.update(status="succeeded", completed_at="2026-01-01T00:00:02.000Z")
        if model in LANGUAGE_MODELS:
            pred.data["output"] = list(pred.pieces)
            pred.data["metrics"] = {
                "predict_time": 0.4,
                "input_token_count": 14,
                "output_token_count": len(pred.pieces),
            }
        else:
            pred.data["output"] = list(pred.pieces)
            pred.data["metrics"] = {"predict_time": 1.2}

    async def get(self, request: web.Request) -> web.Response:
        await self._record(request)
        if not self._authorized(request):
            return problem(401, "You did not pass a valid authentication token")
        pred = self.predictions.get(request.match_info["id"])
        if pred is None:
            return problem(404, "The requested resource could not be found.")
        if pred.data["status"] in ("starting", "processing"):
            if pred.polls_left > 0:
                pred.polls_left -= 1
                pred.data["status"] = "processing"
            if pred.polls_left == 0:
                self._succeed(pred)
        return web.json_response(pred.data)

    async def stream(self, request: web.Request) -> web.StreamResponse:
        await self._record(request)
        pred = self.predictions.get(request.match_info["id"])
        if pred is None:
            return problem(404, "The requested resource could not be found.")
        if request.headers.get("Accept") != "text/event-stream":
            return problem(406, "Accept: text/event-stream is required")
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        for i, piece in enumerate(pred.pieces):
            if pred.cut_after is not None and i >= pred.cut_after:
                await resp.write_eof()
                return resp
            if pred.stream_error and i == 1:
                await resp.write(
                    b"event: error\ndata: " + orjson.dumps({"detail": pred.stream_error}) + b"\n\n"
                )
                await resp.write_eof()
                return resp
            await resp.write(f"event: output\nid: {i}\ndata: {piece}\n\n".encode())
            await asyncio.sleep(0)
            if pred.hold and i == 0:
                try:
                    await asyncio.wait_for(self.release.wait(), 10)
                except TimeoutError:
                    pass
        self._succeed(pred)
        await resp.write(b"event: done\ndata: {}\n\n")
        await resp.write_eof()
        return resp

    async def cancel(self, request: web.Request) -> web.Response:
        await self._record(request)
        if not self._authorized(request):
            return problem(401, "You did not pass a valid authentication token")
        pred = self.predictions.get(request.match_info["id"])
        if pred is None:
            return problem(404, "The requested resource could not be found.")
        if pred.data["status"] in ("starting", "processing"):
            pred.data["status"] = "canceled"
        self.canceled.append(pred.data["id"])
        return web.json_response(pred.data)

    async def file(self, request: web.Request) -> web.Response:
        import base64

        return web.Response(body=base64.b64decode(TINY_PNG_B64), content_type="image/png")
