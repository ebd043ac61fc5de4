"""The router: the terminal filter that picks the upstream(s) for a request and calls them.

Model resolution: aliases first (`aliases: {fast: gpt-4o-mini}`), then `provider/model`
addressing, which pins the request to that provider whatever the strategy (unless some
usable provider serves the full slashed name itself, as Groq does `openai/gpt-oss-120b`).
With no `targets:` in the config, every enabled provider is a target and requests go to
the one that serves the model (by catalog, declared models or name prefix); a lone enabled
provider serves every model. With `targets:`, they are an allowlist: no other provider is
used, and a model no target serves is a 404 before any upstream call.

A client's own provider key (BYO) goes only to the provider it was meant for: the one named
by `provider/model`, else the request's first choice. A fallback target without a key of its
own is skipped rather than handed the client's key.

Then `strategy.mode` orders the targets (filters/routing/strategies.py) and each one is
tried with its own retries, circuit breaker, concurrency limit and timeouts, within the
request's deadline. A stream is tried up to its first content chunk, so it can still move
to another target before the client has seen any content; after that it is never retried.
Streams are timed by `first_byte` and `idle` rather than `total`, and their headers are held
only `stream_header_hold` (filters/routing/stream_timing.py).
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import AsyncIterator
from fnmatch import fnmatchcase
from typing import Any

from ferro_proxy.chain import Filter, Next
from ferro_proxy.config import PluginConfig, TargetConfig, TimeoutConfig
from ferro_proxy.errors import GatewayError
from ferro_proxy.exchange import Attempt, Exchange, Reply, StreamChunk, Usage
from ferro_proxy.metric_labels import model_label
from filters.routing.breaker import OPEN, Permit
from filters.routing.conditions import RequestView, compile_rule
from filters.routing.limits import Saturated, saturated_error
from filters.routing.retry import NO_RETRY, is_transport_failure, should_retry, wait_before_retry
from filters.routing.state import bind_targets, target_keys
from filters.routing.strategies import POOL_MODES, STRATEGIES, Candidate, Context, Route
from filters.routing.stream_timing import (
    CAP_CODE,
    IDLE_CODE,
    NO_TIMERS,
    StreamTimers,
    cap_error,
    first_byte_error,
    hold_headers,
    idle_error,
    stream_timers,
)

log = logging.getLogger("ferro_proxy.router")


class DeadlineExceeded(Exception):
    """The request's own deadline passed (not one target's timeout)."""


class Router(Filter):
    name = "router"
    type = "router"
    description = "Terminal filter: picks the upstream and calls it."

    def __init__(self, config: Any, gateway: Any, plugin: PluginConfig | None = None) -> None:
        super().__init__(config, gateway, plugin)
        # The runtime being built is current while the router is constructed: capture its
        # config and providers so requests that started on it finish on it after a reload.
        cfg = gateway.config
        self.cfg = cfg
        self.providers = gateway.providers
        self.configured = bool(cfg.targets)  # configured targets are an allowlist
        targets = cfg.targets or [TargetConfig(virtual_key=name) for name in self.providers]
        keyed = list(zip(target_keys(targets), targets, strict=True))
        states = bind_targets(gateway, keyed, cfg.strategy.latency_window)
        self.routes = [  # what strategies choose from
            Route(key, t, self.providers[t.virtual_key], state, t.label or key)
            for (key, t), state in zip(keyed, states, strict=True)
            if t.virtual_key in self.providers
        ]
        self.by_provider: dict[str, list[Route]] = {}
        for r in self.routes:
            self.by_provider.setdefault(r.target.virtual_key, []).append(r)
        self.missing = [t.virtual_key for t in targets if t.virtual_key not in self.providers]
        self.timeouts = {r.key: _timeout_of(r.target) for r in self.routes}
        self.stream_timers = {
            r.key: stream_timers(self.timeouts[r.key], r.provider.settings.timeouts) for r in self.routes
        }
        self.mode = cfg.strategy.mode
        self.order = STRATEGIES[self.mode]
        self.pool = self.mode in POOL_MODES
        self.rules = [compile_rule(c) for c in cfg.strategy.conditions]
        self.rng = random.Random()
        metrics = gateway.metrics
        self.attempts_metric = metrics.counter(
            "ferro_router_attempts_total", "Upstream attempts by target and outcome", ["target", "outcome"]
        )
        self.ab_metric = metrics.counter(
            "ferro_ab_requests_total", "Requests per ab-test variant label", ["label"]
        )

    # ------------------------------------------------------------ planning

    def resolve_model(self, ex: Exchange) -> tuple[str, str, str | None]:
        """(requested, model, pinned provider) after aliases and `provider/model` addressing."""
        requested = ex.model
        model = self.cfg.aliases.get(requested, requested)
        pinned = ex.metadata.get("pinned_provider")  # e.g. set for intercepted requests
        if pinned in self.providers:
            prefix, sep, rest = model.partition("/")
            return requested, (rest if sep and prefix == pinned else model), pinned
        if "/" in model:
            prefix, _, rest = model.partition("/")
            if prefix in self.providers and not self._served_verbatim(model):
                return requested, rest, prefix
        return requested, model, None

    def _served_verbatim(self, model: str) -> bool:
        catalog = self.gateway.catalog
        if catalog is not None and any(p in self.by_provider for p in catalog.providers_of(model)):
            return True
        return any(model in r.target.models or model in r.provider.settings.models for r in self.routes)

    def lists(self, route: Route, model: str) -> bool:
        """The target serves `model` under its own name: catalog, provider's declared models or
        name prefixes, a self-hosted provider (any name), or the `models:` globs of a target
        that does not rewrite (a rewrite target's `models:` are what it accepts, not serves)."""
        t = route.target
        return (
            route.provider.serves(model)
            or route.provider.spec.open_models
            or (t.model is None and any(fnmatchcase(model, pattern) for pattern in t.models))
        )

    def serves(self, route: Route, model: str) -> bool:
        """A target with `model:` rewrites every request routed to it (the operator chose what
        is sent), narrowed by its `models:` when it has some; others serve what they list."""
        t = route.target
        if t.model is not None:
            return not t.models or any(fnmatchcase(model, pattern) for pattern in t.models)
        return self.lists(route, model)

    def plan(self, ex: Exchange, requested: str, model: str, pinned: str | None) -> list[Candidate]:
        if pinned is not None:  # whatever the strategy: this provider's targets, this model
            return self._pinned(pinned, model)
        usable = [
            Candidate(r, r.target.model or model) for r in self.routes if r.provider.supports(ex.endpoint)
        ]
        if not usable:
            missing = f" ({', '.join(self.missing)} not enabled)" if self.missing else ""
            raise GatewayError(
                404,
                f"no configured target serves the {ex.endpoint} endpoint{missing}",
                code="model_not_found",
            )
        serving = [c for c in usable if not model or self.serves(c.route, model)]
        if self.configured:
            if not serving:
                return self._nothing_serves(model, {})
            usable = serving  # the allowlist: no strategy may pick a target that does not serve it
        elif not serving and len(usable) == 1:
            serving = usable  # a lone enabled provider gets every model; the upstream has the last word
        if not self.configured and self.mode == "single":
            return serving[:1] if serving else self._nothing_serves(model, {})
        ctx = Context(
            RequestView(ex, requested, model), self.cfg.strategy, self.rules, self.gateway.catalog, self.rng
        )
        ordered = self.order(ctx, usable, serving)
        return ordered or self._nothing_serves(model, ctx.notes)

    def _pinned(self, provider: str, model: str) -> list[Candidate]:
        routes = self.by_provider.get(provider, [])
        if self.configured:
            if not routes:
                raise GatewayError(
                    404,
                    f"the provider {provider!r} is not a configured target",
                    code="model_not_found",
                    param="model",
                )
            routes = [r for r in routes if not model or self.lists(r, model)]
            if not routes:
                return self._nothing_serves(f"{provider}/{model}", {})
        return [Candidate(r, model) for r in routes]

    def served_models(self, provider: str, models: list[str]) -> list[str] | None:
        """Of `models` (a provider's listing), those the allowlist serves on that provider;
        None when the provider is not a target. Everything when no `targets:` are configured."""
        routes = self.by_provider.get(provider)
        if not self.configured:
            return models if provider in self.providers else None
        if not routes:
            return None
        return [m for m in models if any(self.serves(r, m) for r in routes)]

    def routable(self, model: str) -> bool:
        """Some target serves `model` (an alias target, `provider/model` or a bare name);
        always True without `targets:` (the upstream has the last word)."""
        if not self.configured:
            return True
        ex = Exchange(
            request_id="", endpoint="chat", method="GET", path="", headers={}, body={"model": model}
        )
        _, resolved, pinned = self.resolve_model(ex)
        if pinned is None:
            return any(self.serves(r, resolved) for r in self.routes)
        try:
            return bool(self._pinned(pinned, resolved))
        except GatewayError:
            return False

    def client_key_target(self, ex: Exchange, c: Candidate) -> bool:
        """Would this target need the client's own key, which was meant for another provider?"""
        provider = c.route.provider
        return (
            ex.client_api_key is not None
            and ex.client_key_for != provider.name
            and not provider.has_own_credentials()
        )

    def _nothing_serves(self, model: str, notes: dict[str, str]) -> list[Candidate]:
        why = "; ".join(f"{k}: {v}" for k, v in notes.items())
        raise GatewayError(
            404,
            f"the model {model!r} does not exist or no target serves it" + (f" ({why})" if why else ""),
            code="model_not_found",
            param="model",
        )

    # ------------------------------------------------------------ calling

    async def handle(self, ex: Exchange, next: Next) -> Reply:
        requested, model, pinned = self.resolve_model(ex)
        candidates = self.plan(ex, requested, model, pinned)
        if ex.client_api_key is not None and ex.client_key_for is None:
            ex.client_key_for = pinned or candidates[0].route.provider.name
        deadline = ex.metadata.get("deadline")
        if deadline is None:
            deadline = ex.metadata["deadline"] = time.monotonic() + self.cfg.request_timeout
        pool = self.pool or pinned is not None
        route = self._route(ex, candidates, deadline, pool)
        if ex.stream and ex.endpoint in ("chat", "completions"):
            return await hold_headers(route, self.cfg.stream_header_hold)
        return await route

    async def _route(
        self, ex: Exchange, candidates: list[Candidate], deadline: float, pool: bool
    ) -> Reply:
        """Each candidate in turn (with its retries) until one answers."""
        tried: list[str] = []
        last: GatewayError | None = None
        try:
            for c in candidates:
                try:
                    reply = await self._try_target(ex, c, deadline, tried)
                except GatewayError as err:
                    last = err
                    if not err.retryable or not pool:
                        break
                    continue
                if reply is None:  # circuit open: skipped
                    if not pool:
                        break
                    continue
                self._label(ex, c)
                return reply
        except DeadlineExceeded:
            self._label(ex, candidates[0])
            raise GatewayError(
                504,
                f"the request ran out of time ({self.cfg.request_timeout:g}s)"
                + (f"; tried {', '.join(tried)}" if tried else ""),
                code="gateway_timeout",
            ) from None
        self._label(ex, candidates[0])
        raise self._exhausted(candidates, tried, last)

    def _label(self, ex: Exchange, c: Candidate) -> None:
        if self.mode == "ab-test" and "ab_label" not in ex.metadata:
            ex.metadata["ab_label"] = c.route.label
            self.ab_metric.labels(c.route.label).inc()

    def _exhausted(
        self, candidates: list[Candidate], tried: list[str], last: GatewayError | None
    ) -> GatewayError:
        if last is None:  # nothing was even attempted: every circuit is open
            waits = [c.route.state.breaker.retry_in() for c in candidates if c.route.state.breaker]
            retry_after = min(waits) if waits else None
            return GatewayError(
                503,
                f"every target is unavailable: {', '.join(tried)}",
                code="upstream_unavailable",
                type="api_error",
                retry_after=retry_after,
            )
        if len(tried) <= 1:
            return last
        return GatewayError(
            last.status,
            f"{last.message} (tried {', '.join(tried)})",
            code=last.code,
            type=last.type,
            param=last.param,
            headers=last.headers,
            retryable=last.retryable,
            retry_after=last.retry_after,
            provider=last.provider,
            upstream_status=last.upstream_status,
        )

    async def _try_target(
        self, ex: Exchange, c: Candidate, deadline: float, tried: list[str]
    ) -> Reply | None:
        """Up to `retry.attempts` attempts at one target; None when its circuit is open or it
        is skipped (it has no key of its own and the client's key is for another provider)."""
        route = c.route
        if self.client_key_target(ex, c):
            tried.append(
                f"{route.key} (skipped: no key of its own for a client key meant for {ex.client_key_for})"
            )
            return None
        retry = route.target.retry or NO_RETRY
        breaker = route.state.breaker
        last: GatewayError | None = None
        for n in range(retry.attempts):
            permit = breaker.try_acquire() if breaker is not None else Permit(None, probe=False)
            if permit is None:
                tried.append(f"{route.key} (circuit open)")
                if last is not None:
                    raise last
                return None
            try:
                return await self._attempt(ex, c, permit, deadline)
            except GatewayError as err:
                tried.append(f"{route.key} -> {err.status} {err.code or ''}".rstrip())
                last = err
                if n + 1 >= retry.attempts or not should_retry(err, retry):
                    raise
                wait = wait_before_retry(err, retry, n, deadline - time.monotonic(), self.rng)
                if wait is None:  # Retry-After (or backoff) would pass the deadline
                    raise
                if wait > 0:
                    await asyncio.sleep(wait)
        assert last is not None
        raise last

    async def _attempt(self, ex: Exchange, c: Candidate, permit: Permit, deadline: float) -> Reply:
        route = c.route
        limiter = route.state.limiter
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            permit.neutral()
            raise DeadlineExceeded()
        if limiter is not None:
            try:
                await limiter.acquire(deadline)
            except Saturated:
                permit.neutral()
                self.gateway.metrics.child(self.attempts_metric, route.key, "provider_saturated").inc()
                raise saturated_error(route.key, limiter) from None
            except TimeoutError:
                permit.neutral()
                raise DeadlineExceeded() from None
            except BaseException:
                permit.neutral()
                raise
        body = ex.body if ex.body is not None else {}
        if body.get("model") != c.model and ex.endpoint != "passthrough":
            body = {**body, "model": c.model}
        attempt = Attempt(provider=route.provider.name, model=c.model)
        ex.attempts.append(attempt)
        before = ex.usage.copy()
        timeout = self.timeouts[route.key]
        timers = self.stream_timers[route.key] if ex.stream else NO_TIMERS
        if ex.stream:  # `total` is for whole answers; a stream has its first chunk to wait for
            limit, limit_name = _first_limit(timers)
        else:
            limit, limit_name = (timeout.total if timeout is not None else None), "total"
        remaining = deadline - time.monotonic()
        bound = min(remaining, limit) if limit else remaining
        handed_over = False
        begun = time.monotonic()
        started = time.perf_counter()
        try:
            first: StreamChunk | None = None
            try:
                async with asyncio.timeout(bound) as timer:
                    reply = await route.provider.send(ex, body, timeout)
                    if reply.stream is not None and ex.endpoint != "passthrough":
                        first = await _first_chunk(reply.stream)
            except TimeoutError:
                if not timer.expired():
                    raise GatewayError(
                        504, f"{route.key} did not answer in time", code="gateway_timeout"
                    ) from None
                if time.monotonic() >= deadline - 0.001:
                    permit.neutral()
                    attempt.status, attempt.error = 504, "deadline"
                    raise DeadlineExceeded() from None
                assert limit is not None
                if limit_name == "first_byte":
                    raise first_byte_error(route.key, limit) from None
                if limit_name == "stream_total":
                    raise cap_error(route.key, f"timeout.stream_total {limit:g}s passed") from None
                raise GatewayError(
                    504, f"{route.key} did not answer within {limit:g}s", code="gateway_timeout"
                ) from None
            elapsed = time.perf_counter() - started
            attempt.status = reply.status
            ex.provider, ex.resolved_model, ex.target = route.provider.name, c.model, route.key
            self.gateway.metrics.child(self.attempts_metric, route.key, "ok").inc()
            if reply.stream is None:
                permit.success()
                route.state.latency.record(elapsed)
                self.account(ex, c, before)
                if ex.cost_usd is not None:
                    reply.headers["x-ferro-cost-usd"] = f"{ex.cost_usd:.8f}"
                return reply
            if first is not None:
                route.state.latency.record(elapsed)  # time to first token
                if ex.ttft_seconds is None:
                    ex.ttft_seconds = ex.elapsed()
            cap = _Cap(deadline, self.cfg.request_timeout, begun, timers)
            reply.stream = self._guarded(ex, c, permit, before, first, reply.stream, cap)
            handed_over = True
            return reply
        except GatewayError as err:
            attempt.status, attempt.error = err.status, err.code or err.message
            self.gateway.metrics.child(self.attempts_metric, route.key, attempt_outcome(err)).inc()
            if counts_against_target(err):
                permit.failure()
                if err.code == "gateway_timeout":  # a slow target should rank as slow
                    route.state.latency.record(time.perf_counter() - started)
            else:
                permit.neutral()
            raise
        except BaseException:
            permit.neutral()  # the client went away (cancelled): says nothing about the target
            raise
        finally:
            attempt.duration = time.perf_counter() - started
            ex.upstream_seconds += attempt.duration
            metrics = self.gateway.metrics
            metrics.child(metrics.upstream_duration, route.provider.name).observe(attempt.duration)
            if limiter is not None and not handed_over:
                limiter.release()

    async def _guarded(
        self,
        ex: Exchange,
        c: Candidate,
        permit: Permit,
        before: Usage,
        first: StreamChunk | None,
        rest: AsyncIterator[StreamChunk],
        cap: _Cap,
    ) -> AsyncIterator[StreamChunk]:
        """The rest of a stream: once the client has bytes, failures end it (never retried)."""
        limiter = c.route.state.limiter
        key = c.route.key
        idle = cap.timers.idle
        try:
            if first is not None and first.kind != "end":
                yield first
            while True:
                left = cap.at - time.monotonic()
                wait = min(left, idle) if idle else left
                try:
                    async with asyncio.timeout(max(wait, 0.0)) as timer:
                        chunk = await rest.__anext__()
                except StopAsyncIteration:
                    break
                except TimeoutError:
                    if not timer.expired():
                        raise
                    if time.monotonic() >= cap.at - 0.001:
                        permit.success()  # it streamed until the gateway's own cap: healthy
                        raise cap_error(key, cap.what()) from None
                    assert idle is not None
                    raise idle_error(key, idle) from None
                yield chunk
            permit.success()
        except GatewayError as err:
            if counts_against_target(err):
                permit.failure()
            raise
        finally:
            permit.neutral()  # no-op once settled; a client disconnect lands here
            if limiter is not None:
                limiter.release()
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
        provider = c.route.provider.name
        info = self.gateway.catalog.get(provider, c.model) if self.gateway.catalog else None
        cost = info.cost(prompt, completion, cached) if info is not None else None
        metrics = self.gateway.metrics
        if cost is None:
            metrics.child(metrics.unpriced, provider, model_label(self.gateway, provider, c.model)).inc()
            ex.metadata["unpriced"] = True
            return
        ex.cost_usd = (ex.cost_usd or 0.0) + cost
        metrics.child(metrics.cost, provider, c.model).inc(cost)

    # ------------------------------------------------------------ reporting

    def health(self) -> dict[str, Any]:
        """Each target's circuit, latency and queue, for `/health` on both listeners."""
        report: dict[str, Any] = {}
        for r in self.routes:
            state = r.state
            detail: dict[str, Any] = {"provider": r.provider.name, "state": "closed"}
            if r.target.model:
                detail["model"] = r.target.model
            if self.mode in ("loadbalance", "ab-test"):
                detail["weight"] = r.target.weight
                detail["label"] = r.label
            if state.breaker is not None:
                detail["state"] = state.breaker.state
                detail["consecutive_failures"] = state.breaker.consecutive_failures
                if detail["state"] == OPEN:
                    detail["retry_in_s"] = round(state.breaker.retry_in(), 3)
            if state.latency.p50 is not None:
                detail["latency_p50_ms"] = round(state.latency.p50 * 1000, 3)
            if state.limiter is not None:
                detail["in_flight"] = state.limiter.active
                detail["queued"] = state.limiter.queued
            report[r.key] = detail
        for name in self.missing:
            report.setdefault(name, {"provider": name, "state": "not_enabled"})
        return report


def counts_against_target(err: GatewayError) -> bool:
    """Failures that say the target is unhealthy. 429s, saturation, client errors,
    disconnects and the gateway's own cap on a stream's length do not."""
    if err.code in ("provider_saturated", "client_closed", CAP_CODE) or err.status in (429, 499):
        return False
    if is_transport_failure(err):
        return True
    return err.status >= 500 or err.upstream_status == 408


def _timeout_of(target: TargetConfig) -> TimeoutConfig | None:
    if target.timeout is None or isinstance(target.timeout, TimeoutConfig):
        return target.timeout
    return TimeoutConfig(total=float(target.timeout))


async def _first_chunk(stream: AsyncIterator[StreamChunk]) -> StreamChunk:
    """Pull the first content chunk so failures before any content is sent can still fail
    over. An upstream's own keepalive comments before it are dropped (the gateway sends its own)."""
    try:
        chunk = await stream.__anext__()
        while chunk.kind == "comment":
            chunk = await stream.__anext__()
        return chunk
    except StopAsyncIteration:
        return StreamChunk(b"", "end")


def _first_limit(timers: StreamTimers) -> tuple[float | None, str]:
    """What bounds the wait for a stream's first chunk: `first_byte` or `stream_total`."""
    first_byte, total = timers.first_byte, timers.total
    if total and (not first_byte or total < first_byte):
        return total, "stream_total"
    return first_byte, "first_byte"


class _Cap:
    """When a stream must end at the latest: its `stream_total`, else the request's deadline."""

    __slots__ = ("at", "timers", "_own", "_request_timeout")

    def __init__(self, deadline: float, request_timeout: float, begun: float, timers: StreamTimers) -> None:
        self.timers = timers
        self._request_timeout = request_timeout
        own = begun + timers.total if timers.total else None
        self._own = own is not None and own < deadline
        self.at = own if own is not None and own < deadline else deadline

    def what(self) -> str:
        if self._own:
            return f"timeout.stream_total {self.timers.total:g}s passed"
        return f"the request ran out of time (request_timeout {self._request_timeout:g}s)"


# The gateway's own error codes; an upstream's free-form `code` would make an unbounded label.
_OWN_OUTCOMES = frozenset(
    {
        "gateway_timeout",
        IDLE_CODE,
        CAP_CODE,
        "upstream_unreachable",
        "upstream_error",
        "upstream_auth_error",
        "upstream_bad_response",
        "upstream_stream_error",
        "rate_limit_exceeded",
        "provider_saturated",
        "unsupported_endpoint",
        "image_fetch_failed",
        "not_found",
    }
)


def attempt_outcome(err: GatewayError) -> str:
    """The `outcome` label of an attempt that failed: our code, else the HTTP status."""
    return err.code if err.code in _OWN_OUTCOMES else f"http_{err.status}"
