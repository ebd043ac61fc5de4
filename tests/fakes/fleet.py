"""Several fake OpenAI-compatible upstreams at once, one per provider name, for router tests.

Every OpenAI-compatible provider (openai, groq, together, deepseek, mistral ...) can be
pointed at its own FakeOpenAI through `providers: {<name>: {base_url: ...}}`; each fake
counts the requests it got and can be scripted to fail (see tests/fakes/openai_upstream.py).
"""

from __future__ import annotations

from typing import Any

import aiohttp

from tests.fakes.openai_upstream import FakeOpenAI


class Fleet:
    def __init__(self) -> None:
        self.fakes: dict[str, FakeOpenAI] = {}

    async def add(self, *names: str, **attrs: Any) -> Fleet:
        for name in names:
            fake = await FakeOpenAI(name=name, reply_text=f"hello from {name}", **attrs).start()
            self.fakes[name] = fake
        return self

    def __getitem__(self, name: str) -> FakeOpenAI:
        return self.fakes[name]

    def providers(self, **extra: dict[str, Any]) -> dict[str, Any]:
        """The `providers:` section pointing each provider name at its fake."""
        return {
            name: {"base_url": fake.base_url, "api_key": f"sk-upstream-{name}", **extra.get(name, {})}
            for name, fake in self.fakes.items()
        }

    def counts(self) -> dict[str, int]:
        return {name: len(fake.requests) for name, fake in self.fakes.items()}

    def reset(self) -> None:
        for fake in self.fakes.values():
            fake.requests.clear()
            fake.script.clear()

    async def stop(self) -> None:
        for fake in self.fakes.values():
            await fake.stop()


async def get_json(url: str) -> Any:
    async with aiohttp.ClientSession() as s, s.get(url) as r:
        return await r.json()


async def metrics_text(admin_url: str) -> str:
    async with aiohttp.ClientSession() as s, s.get(admin_url + "/metrics") as r:
        return await r.text()


def metric_value(text: str, name: str, **labels: str) -> float | None:
    """The value of one sample in Prometheus text format, or None when absent."""
    for line in text.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        head, _, value = line.rpartition(" ")
        if all(f'{k}="{v}"' in head for k, v in labels.items()):
            return float(value)
    return None
