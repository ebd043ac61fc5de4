"""A fake Hugging Face router on loopback.

`/v1/chat/completions` is the OpenAI-compatible router (answers from the OpenAI-shaped
fake); `/hf-inference/models/{model}/pipeline/feature-extraction` answers one vector per
input (or per-token vectors for models named `*token-level*`), and
`/hf-inference/models/{model}` (text-to-image) answers raw image bytes. Every route wants
`Authorization: Bearer <token>` (401 `{"error": ...}` otherwise); bodies without `inputs`
are refused (400), as the Inference API does.
"""

from __future__ import annotations

from dataclasses import dataclass

import orjson
from aiohttp import web

from tests.fakes.openai_upstream import FakeOpenAI, Recorded

PNG = b"\x89PNG\r\n\x1a\nfake-hf-image"


@dataclass
class FakeHuggingFace(FakeOpenAI):
    name: str = "fake-hugging-face"
    token: str = "hf_test_token"
    reply_text: str = "Hello from the fake HF router."

    @property
    def root(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> FakeHuggingFace:
        app = web.Application(client_max_size=64 * 1024 * 1024, middlewares=[self._auth])
        app.router.add_post("/v1/chat/completions", self.chat)
        app.router.add_post(
            "/hf-inference/models/{model:.+}/pipeline/feature-extraction", self.feature_extraction
        )
        app.router.add_post("/hf-inference/models/{model:.+}", self.text_to_image)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        self.port = self.runner.addresses[0][1]
        return self

    @web.middleware
    async def _auth(self, request: web.Request, handler):  # type: ignore[no-untyped-def]
        if request.headers.get("Authorization") != f"Bearer {self.token}":
            return web.json_response({"error": "Invalid credentials in Authorization header"}, status=401)
        return await handler(request)

    async def _native(self, request: web.Request) -> dict | web.Response:
        raw = await request.read()
        body = orjson.loads(raw) if raw else {}
        self.requests.append(Recorded(request.method, request.path_qs, dict(request.headers), body, raw))
        b = self.script.pop(0) if self.script else {}
        if b.get("status"):
            return web.json_response({"error": b.get("message", "fake failure")}, status=b["status"])
        if "inputs" not in body:
            return web.json_response({"error": "Missing 'inputs' in the request body"}, status=400)
        return body

    async def feature_extraction(self, request: web.Request) -> web.Response:
        body = await self._native(request)
        if isinstance(body, web.Response):
            return body
        inputs = body["inputs"] if isinstance(body["inputs"], list) else [body["inputs"]]
        if "token-level" in request.match_info["model"]:
            out = [[[float(len(t)), 1.0], [float(len(t)) + 2, 3.0]] for t in inputs]
        else:
            out = [[float(len(t)), 0.5, -0.5] for t in inputs]
        return web.json_response(out)

    async def text_to_image(self, request: web.Request) -> web.Response:
        body = await self._native(request)
        if isinstance(body, web.Response):
            return body
        return web.Response(body=PNG, content_type="image/png")
