"""The router: the terminal filter that picks the upstream(s) for a request and calls them.

Model resolution: aliases first (`aliases: {fast: gpt-4o-mini}`), then `provider/model`
addressing, which pins the request to that provider whatever the strategy. With no
`targets:` in the config, every enabled provider is a target and requests go to the one
that serves the model (by catalog, declared models or name prefix).
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from ferro_proxy.chain import Filter, Next
from ferro_proxy.config import TargetConfig, TimeoutConfig
from ferro_proxy.errors import GatewayError
from ferro_proxy.exchange import Attempt, Exchange, Reply, StreamChunk, Usage
from providers.base import Provider

log = logging.getLogger("ferro_proxy.router")


@dataclass(slots=True)
class Candidate:
    target: TargetConfig
    provider: Provider
    model: str


class Router(Filter):
    name = "router"
    type = "router"
    description = "Terminal filter: picks the upstream and calls it."

    # ------------------------------------------------------------ planning

    def resolve_model(self, ex: Exchange) -> tuple[str, str | None]:
        """(model, pinned provider) after aliases and `provider/model` addressing."""
        config = self.gateway.config
        model = ex.model
        model = config.aliases.get(model, model)
        if "/" in model:
            prefix, _, rest = model.partition("/")
            if prefix in self.gateway.providers:
                return rest, prefix
        return model, None

    def targets(self) -> list[TargetConfig]:
        config = self.gateway.config
        if config.targets:
            return config.targets
        return [TargetConfig(virtual_key=name) for name in self.gateway.providers]

    def serves(self, target: TargetConfig, provider: Provider, model: str) -> bool:
        return model in target.models or target.model == model or provider.serves(model)

    def plan(self, ex: Exchange, model: str, pinned: str | None) -> list[Candidate]:
        providers = self.gateway.providers
        if pinned is not None:
            provider = providers[pinned]
            own = [t for t in self.targets() if t.virtual_key == pinned]
            return [Candidate(own[0] if own else TargetConfig(virtual_key=pinned), provider, model)]
        usable = [
            (t, providers[t.virtual_key])
            for t in self.targets()
            if t.virtual_key in providers and providers[t.virtual_key].supports(ex.endpoint)
        ]
        if not usable:
            raise GatewayError(
                404,
                "no configured provider serves this request" + (f" (model {model!r})" if model else ""),
                code="model_not_found",
            )
        mode = self.gateway.config.strategy.mode
        if not self.gateway.config.targets:  # model-name routing over every enabled provider
            serving = [(t, p) for t, p in usable if not model or self.serves(t, p, model)]
            if not serving and len(usable) == 1:
                serving = usable
            if not serving:
                raise GatewayError(
                    404,
                    f"the model {model!r} does not exist or no provider serves it",
                    code="model_not_found",
                    param="model",
                )
            return [Candidate(t, p, t.model or model) for t, p in serving[:1]]
        if mode == "single":
            t, p = usable[0]
            return [Candidate(t, p, t.model or model)]
        # fallback (and, until the router learns more, every pool mode): in order, serving first
        serving = [(t, p) for t, p in usable if not model or self.serves(t, p, model)]
        ordered = serving or (usable if len(usable) == 1 else [])
        if not ordered:
            raise GatewayError(
                404,
                f"the model {model!r} does not exist or no target serves it",
                code="model_not_found",
                param="model",
            )
        return [Candidate(t, p, t.model or model) for t, p in ordered]

    # ------------------------------------------------------------ calling

    async def handle(self, ex: Exchange, next: Next) -> Reply:
        model, pinned = self.resolve_model(ex)
        candidates = self.plan(ex, model, pinned)
        last: GatewayError | None = None
        for candidate in candidates:
            try:
                return await self.attempt(ex, candidate)
            except GatewayError as err:
                last = err
                if not err.retryable:
                    raise
        assert last is not None
        raise last

    async def attempt(self, ex: Exchange, c: Candidate, timeout: TimeoutConfig | None = None) -> Reply:
        body = ex.body if ex.body is not None else {}
        if body.get("model") != c.model and ex.endpoint != "passthrough":
            body = {**body, "model": c.model}
        attempt = Attempt(provider=c.provider.name, model=c.model)
        ex.attempts.append(attempt)
        usage_before = Usage(**{k: getattr(ex.usage, k) for k in Usage.__slots__})
        started = time.perf_counter()
        try:
            reply = await c.provider.send(ex, body, timeout)
            first = None
            if reply.stream is not None and ex.endpoint != "passthrough":
                first = await _first_chunk(reply.stream)
        except GatewayError as err:
            attempt.status, attempt.error = err.status, err.message
            raise
        finally:
            attempt.duration = time.perf_counter() - started
            ex.upstream_seconds += attempt.duration
            self.gateway.metrics.upstream_duration.labels(c.provider.name).observe(attempt.duration)
        attempt.status = reply.status
        ex.provider, ex.resolved_model, ex.target = c.provider.name, c.model, c.target.virtual_key
        if reply.stream is None:
            self.account(ex, c, usage_before)
            if ex.cost_usd is not None:
                reply.headers["x-ferro-cost-usd"] = f"{ex.cost_usd:.8f}"
        elif first is not None:
            if ex.ttft_seconds is None:
                ex.ttft_seconds = ex.elapsed()
            reply.stream = self._accounted(ex, c, usage_before, first, reply.stream)
        return reply

    async def _accounted(
        self, ex: Exchange, c: Candidate, before: Usage, first: StreamChunk, rest: AsyncIterator[StreamChunk]
    ) -> AsyncIterator[StreamChunk]:
        try:
            if first.kind != "end":
                yield first
            async for chunk in rest:
                yield chunk
        finally:
            self.account(ex, c, before)
            aclose = getattr(rest, "aclose", None)
            if aclose is not None:
                await aclose()

    def account(self, ex: Exchange, c: Candidate, before: Usage) -> None:
        """Price this attempt's share of the usage from the catalog."""
        prompt = ex.usage.prompt_tokens - before.prompt_tokens
        completion = ex.usage.completion_tokens - before.completion_tokens
        cached = ex.usage.cached_tokens - before.cached_tokens
        if not (prompt or completion):
            return
        info = self.gateway.catalog.get(c.provider.name, c.model) if self.gateway.catalog else None
        cost = info.cost(prompt, completion, cached) if info is not None else None
        metrics = self.gateway.metrics
        if cost is None:
            metrics.unpriced.labels(c.provider.name, c.model).inc()
            ex.metadata["unpriced"] = True
            return
        ex.cost_usd = (ex.cost_usd or 0.0) + cost
        metrics.cost.labels(c.provider.name, c.model).inc(cost)

    def health(self) -> dict[str, Any]:
        return {}


async def _first_chunk(stream: AsyncIterator[StreamChunk]) -> StreamChunk:
    """Pull the first chunk so failures before any byte is sent can still fail over."""
    try:
        return await stream.__anext__()
    except StopAsyncIteration:
        return StreamChunk(b"", "end")
