"""The fake OpenAI-compatible upstream served under any base path, for providers whose
OpenAI-compatible API does not live at `/v1` (OpenRouter `/api/v1`, DeepInfra `/v1/openai`,
Cloudflare `/client/v4/accounts/{id}/ai/v1`, Databricks `/serving-endpoints` ...).

Only the exact prefix is served: a request the gateway sends to any other path gets a 404,
so a test sees a wrong URL as a failed call, not as a silent success.
"""

from __future__ import annotations

from dataclasses import dataclass

from aiohttp import web

from tests.fakes.openai_upstream import FakeOpenAI


@dataclass
class FakeOpenAIAt(FakeOpenAI):
    prefix: str = "/v1"

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}{self.prefix}"

    @property
    def root_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self, port: int = 0) -> FakeOpenAIAt:
        app = web.Application()
        app.router.add_post(self.prefix + "/chat/completions", self.chat)
        app.router.add_post(self.prefix + "/completions", self.completions)
        app.router.add_post(self.prefix + "/embeddings", self.embeddings)
        self.runner = web.AppRunner(app, handler_cancellation=True)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", port)
        await site.start()
        self.port = self.runner.addresses[0][1]
        return self
