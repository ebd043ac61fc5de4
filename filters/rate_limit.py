"""`rate-limit`: token buckets with burst for requests per second/minute and tokens per
minute, globally, per gateway key, per `user` body field or per model.

Before the request: one atomic take over every bucket that applies (one Redis round trip
with `backend: redis`). Token buckets are charged an estimate of the input up front
(request bytes / 4) and corrected with the real usage once the answer is complete, so
tokens of streamed answers count too. Over a limit: 429 `rate_limit_exceeded` with
`Retry-After`; every answer carries OpenAI-style `x-ratelimit-*` headers.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any, Literal

import msgspec

from ferro_proxy.chain import Filter, Next, register_filter
from ferro_proxy.config import Base, Duration
from ferro_proxy.errors import GatewayError
from ferro_proxy.exchange import Exchange, Reply
from filters.limits_backends import (
    Bucket,
    BucketDecision,
    MemoryBuckets,
    RedisBuckets,
    ThrottledWarning,
    WriteBehind,
    caller_identity,
    check_backend,
    safe_component,
    user_of,
)

log = logging.getLogger("ferro_proxy.rate_limit")

Scope = Literal["global", "key", "user", "model"]
_SCOPE_WORDS = {"global": "in total", "key": "per key", "user": "per user", "model": "per model"}


class LimitRule(Base):
    scope: Scope = "key"
    requests_per_second: float | None = None
    requests_per_minute: float | None = None
    tokens_per_minute: float | None = None
    burst: float | None = None  # capacity of the request buckets (default: the per-period amount)
    token_burst: float | None = None  # capacity of the token bucket (default: tokens_per_minute)
    models: list[str] = msgspec.field(default_factory=list)  # only these models (after aliases)


class RateLimitConfig(Base):
    backend: Literal["memory", "redis"] = "memory"
    dsn: str | None = None
    limits: list[LimitRule] = msgspec.field(default_factory=list)
    key_limits: bool = True  # also apply a gateway key's own rpm_limit / tpm_limit
    key_prefix: str = "ferro:rl:"
    timeout: Duration = 1.0  # per Redis call; generous so a busy loop is not mistaken for an outage
    fail_open: bool = True  # backend down: let requests through (warning logged)


@dataclass(frozen=True, slots=True)
class Rate:
    """One bucket definition of a rule: requests or tokens, refill per second, capacity."""

    id: str
    kind: str  # requests | tokens
    scope: str
    per_second: float
    capacity: float
    text: str  # for error messages: "2 requests per minute per key"


def _rates(index: int, rule: LimitRule) -> list[Rate]:
    where = f"limits[{index}]"
    tag = rule.scope + (":" + ",".join(sorted(rule.models)) if rule.models else "")
    out: list[Rate] = []
    per = (
        ("requests", "rps", rule.requests_per_second, 1.0, "second", rule.burst),
        ("requests", "rpm", rule.requests_per_minute, 60.0, "minute", rule.burst),
        ("tokens", "tpm", rule.tokens_per_minute, 60.0, "minute", rule.token_burst),
    )
    for kind, short, amount, period, unit, burst in per:
        if amount is None:
            continue
        if amount <= 0:
            raise ValueError(f"{where}: {kind} per {unit} must be > 0")
        if burst is not None and burst < 1:
            raise ValueError(f"{where}: burst must be >= 1")
        text = f"{amount:g} {kind} per {unit} {_SCOPE_WORDS[rule.scope]}"
        out.append(Rate(f"{tag}|{short}", kind, rule.scope, amount / period, burst or amount, text))
    if not out:
        raise ValueError(f"{where}: set requests_per_second, requests_per_minute or tokens_per_minute")
    return out


@register_filter
class RateLimit(Filter):
    name = "rate-limit"
    type = "ratelimit"
    description = "Token-bucket limits on requests/s, requests/min and tokens/min (global, key, user, model)"
    Config = RateLimitConfig

    def __init__(self, config: RateLimitConfig, gateway: Any, plugin: Any = None) -> None:
        super().__init__(config, gateway, plugin)
        check_backend(config.backend, config.dsn, {"redis": ("redis", "rediss", "unix")})
        if not config.limits and not config.key_limits:
            raise ValueError("nothing to limit: add limits or set key_limits: true")
        self.rules = [(rule, _rates(i, rule)) for i, rule in enumerate(config.limits)]
        self.store: MemoryBuckets | RedisBuckets | None = None
        metrics = gateway.metrics
        self._limited = metrics.counter(
            "ferro_rate_limited_total", "Requests refused by rate-limit", ["scope", "limit"]
        )
        self._backend_errors = metrics.counter(
            "ferro_limits_backend_errors_total", "Failed calls to a rate-limit/budget backend", ["filter"]
        ).labels(self.name)
        self._warn = ThrottledWarning(log, "rate-limit")
        self._writes = WriteBehind(self._write_failed)

    async def start(self) -> None:
        c = self.config
        if c.backend == "redis":
            assert c.dsn is not None
            self.store = RedisBuckets(c.dsn, c.key_prefix, c.timeout)
        else:
            self.store = MemoryBuckets()

    async def close(self) -> None:
        await self._writes.drain()
        if self.store is not None:
            await self.store.close()

    # ------------------------------------------------------------ the filter

    async def handle(self, ex: Exchange, next: Next) -> Reply:
        if self.store is None:
            return await next(ex)
        rates, scopes = self._applicable(ex)
        if not rates:
            return await next(ex)
        estimate = _estimate_tokens(ex)
        buckets: list[Bucket] = [
            (key, r.per_second, r.capacity, 1.0 if r.kind == "requests" else float(estimate))
            for r, key in zip(rates, scopes, strict=True)
        ]
        token_keys = [b[0] for b, r in zip(buckets, rates, strict=True) if r.kind == "tokens"]
        try:
            await self._writes.settle(token_keys)
            decision = await self.store.take(buckets)
        except Exception as exc:
            self._backend_errors.inc()
            if not self.config.fail_open:
                self._warn(exc, "refusing requests until it is back (fail_open: false)")
                raise GatewayError(
                    503,
                    "rate limits cannot be checked right now; try again shortly",
                    code="rate_limit_unavailable",
                    type="api_error",
                    retry_after=5,
                ) from None
            self._warn(exc, "letting requests through unlimited (fail_open)")
            return await next(ex)
        headers = _headers(rates, decision.levels)
        if not decision.allowed:
            raise self._refusal(rates, buckets, decision, headers)
        ex.response_headers.update(headers)
        if not token_keys:
            return await next(ex)
        token_buckets = [b for b, r in zip(buckets, rates, strict=True) if r.kind == "tokens"]
        try:
            reply = await next(ex)
        except BaseException:
            self._correct(token_buckets, ex, estimate)
            raise
        reply.on_complete(lambda e, r, error: self._correct(token_buckets, e, estimate))
        return reply

    def _applicable(self, ex: Exchange) -> tuple[list[Rate], list[str]]:
        """The rates that apply to this request and the storage key of each one's bucket."""
        model = ex.model
        if model:
            model = self.gateway.config.aliases.get(model, model)
        rates: list[Rate] = []
        keys: list[str] = []
        for rule, rule_rates in self.rules:
            if rule.models and model not in rule.models:
                continue
            value = self._scope_value(rule.scope, ex, model)
            for r in rule_rates:
                rates.append(r)
                keys.append(f"{r.id}|{value}")
        if self.config.key_limits and ex.gateway_key is not None:
            rates_keys = _key_record_rates(ex.gateway_key)
            for r in rates_keys:
                rates.append(r)
                keys.append(f"{r.id}|{safe_component(str(getattr(ex.gateway_key, 'id', '')))}")
        return rates, keys

    @staticmethod
    def _scope_value(scope: str, ex: Exchange, model: str) -> str:
        if scope == "global":
            return "*"
        if scope == "key":
            return caller_identity(ex)
        if scope == "user":
            user = user_of(ex)
            return safe_component(user) if user else "-"
        return safe_component(model or "-")

    def _refusal(
        self, rates: list[Rate], buckets: list[Bucket], decision: BucketDecision, headers: dict[str, str]
    ) -> GatewayError:
        short = [
            r for r, b, level in zip(rates, buckets, decision.levels, strict=True) if level < min(b[3], b[2])
        ]
        for r in short:
            self._limited.labels(r.scope, r.kind).inc()
        wait = max(decision.wait, 0.001)
        what = "; ".join(r.text for r in short) or "rate limit"
        return GatewayError(
            429,
            f"Rate limit reached ({what}). Try again in {_go_duration(wait)}.",
            code="rate_limit_exceeded",
            type="rate_limit_error",
            retry_after=wait,
            headers=headers,
        )

    def _correct(self, token_buckets: list[Bucket], ex: Exchange, estimate: int) -> None:
        """Replace the up-front estimate with the tokens the answer really used."""
        delta = ex.usage.total_tokens - estimate
        if delta == 0 or self.store is None:
            return
        charges = [(key, rate, cap, float(delta)) for key, rate, cap, _ in token_buckets]
        if isinstance(self.store, MemoryBuckets):
            self.store.charge_now(charges)
        else:
            self._writes.schedule([c[0] for c in charges], self.store.charge(charges))

    def _write_failed(self, exc: BaseException) -> None:
        self._backend_errors.inc()
        self._warn(exc, "token usage could not be recorded")

    def health(self) -> dict[str, Any] | None:
        return {"backend": self.config.backend, "rules": len(self.rules)}


def _key_record_rates(record: Any) -> list[Rate]:
    """Limits stored on the gateway key itself (rpm_limit / tpm_limit), if it has any."""
    out: list[Rate] = []
    rpm = getattr(record, "rpm_limit", None)
    tpm = getattr(record, "tpm_limit", None)
    if isinstance(rpm, int | float) and rpm > 0:
        out.append(
            Rate(
                "keyrec|rpm",
                "requests",
                "key",
                rpm / 60.0,
                float(rpm),
                f"{rpm:g} requests per minute for this key",
            )
        )
    if isinstance(tpm, int | float) and tpm > 0:
        out.append(
            Rate(
                "keyrec|tpm",
                "tokens",
                "key",
                tpm / 60.0,
                float(tpm),
                f"{tpm:g} tokens per minute for this key",
            )
        )
    return out


def _estimate_tokens(ex: Exchange) -> int:
    """A cheap upper-ish guess of the input tokens: about four bytes of JSON per token."""
    return max(1, len(ex.raw_body) // 4)


def _headers(rates: list[Rate], levels: list[float]) -> dict[str, str]:
    """x-ratelimit-{limit,remaining,reset}-{requests,tokens} for the tightest bucket of each kind."""
    out: dict[str, str] = {}
    for kind in ("requests", "tokens"):
        tightest: tuple[Rate, float] | None = None
        for r, level in zip(rates, levels, strict=True):
            if r.kind == kind and (tightest is None or level < tightest[1]):
                tightest = (r, level)
        if tightest is None:
            continue
        r, level = tightest
        out[f"x-ratelimit-limit-{kind}"] = str(int(r.capacity))
        out[f"x-ratelimit-remaining-{kind}"] = str(max(0, math.floor(level)))
        out[f"x-ratelimit-reset-{kind}"] = _go_duration(max(0.0, r.capacity - level) / r.per_second)
    return out


def _go_duration(seconds: float) -> str:
    """A duration the way OpenAI's reset headers write it: 20ms, 1.5s, 6m0s."""
    if seconds <= 0:
        return "0s"
    if seconds < 1:
        return f"{max(1, round(seconds * 1000))}ms"
    minutes, secs = divmod(seconds, 60.0)
    hours, minutes = divmod(int(minutes), 60)
    text = f"{secs:.3f}".rstrip("0").rstrip(".") + "s"
    if hours or minutes:
        text = f"{minutes}m" + text
    if hours:
        text = f"{hours}h" + text
    return text
