"""A fake Azure AI Foundry endpoint (Azure AI Model Inference API) on loopback.

Routes `/models/chat/completions` and `/models/embeddings`, each requiring `api-version`
in the query and the key in the `api-key` header, or an Entra ID token in
`Authorization: Bearer` (one of `bearer_tokens`; 401 otherwise). As the reference says,
a body parameter outside the API's set is refused (400) unless the request carries
`extra-parameters: pass-through`. Errors use `{"error": {"code", "message", "status"}}`.
Answers come from the OpenAI-shaped fake (the API's bodies are OpenAI's shape).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import orjson
from aiohttp import web

from tests.fakes.openai_upstream import FakeOpenAI

_CHAT = {
    "model",
    "messages",
    "frequency_penalty",
    "presence_penalty",
    "temperature",
    "top_p",
    "max_tokens",
    "response_format",
    "stop",
    "stream",
    "tools",
    "tool_choice",
    "seed",
    "modalities",
}
_EMBED = {"model", "input", "dimensions", "encoding_format", "input_type"}
API_VERSIONS = {"2024-05-01-preview", "2024-08-01-preview", "2025-04-01"}


@dataclass
class FakeAzureFoundry(FakeOpenAI):
    name: str = "fake-azure-foundry"
    api_key: str = "foundry-test-key"
    reply_text: str = "Hello from fake Foundry."
    bearer_tokens: set[str] = field(default_factory=set)  # Entra ID tokens it accepts

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> FakeAzureFoundry:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_post("/models/chat/completions", self.foundry_chat)
        app.router.add_post("/models/embeddings", self.foundry_embeddings)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        self.port = self.runner.addresses[0][1]
        return self

    @staticmethod
    def _error(status: int, code: str, message: str) -> web.Response:
        return web.json_response(
            {"error": {"code": code, "message": message, "status": status}}, status=status
        )

    async def _check(self, request: web.Request, allowed: set[str]) -> web.Response | None:
        if request.query.get("api-version") not in API_VERSIONS:
            return self._error(400, "BadRequest", "Missing or unsupported api-version query parameter")
        auth = request.headers.get("Authorization", "")
        entra_ok = auth.startswith("Bearer ") and auth[7:] in self.bearer_tokens
        if request.headers.get("api-key") != self.api_key and not entra_ok:
            return self._error(
                401, "Unauthorized", "Access denied due to invalid subscription key or wrong API endpoint."
            )
        body = orjson.loads(await request.read() or b"{}")
        extra = sorted(set(body) - allowed)
        if extra and request.headers.get("extra-parameters") != "pass-through":
            return self._error(
                400,
                "Invalid input",
                f"Extra parameters ['{extra[0]}'] are not allowed when extra-parameters is not set.",
            )
        return None

    async def foundry_chat(self, request: web.Request) -> web.StreamResponse:
        refused = await self._check(request, _CHAT)
        if refused is not None:
            await self._record(request)
            return refused
        return await self.chat(request)

    async def foundry_embeddings(self, request: web.Request) -> web.StreamResponse:
        refused = await self._check(request, _EMBED)
        if refused is not None:
            await self._record(request)
            return refused
        return await self.embeddings(request)
