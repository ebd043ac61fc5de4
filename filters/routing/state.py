"""Per-target state that must outlive a config reload (breakers, latency, queues).

It lives in `gateway.state["router"]`, keyed by a target key that stays the same when
other targets are added or reordered: the provider name, plus `:model` when the target
rewrites the model, plus `@label` when it has one (and `#2`, `#3` ... for duplicates).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from prometheus_client import Gauge

from ferro_proxy.config import TargetConfig
from filters.routing.breaker import OPEN, STATE_VALUE, CircuitBreaker
from filters.routing.latency import LatencyStats
from filters.routing.limits import ConcurrencyLimiter

if TYPE_CHECKING:
    from ferro_proxy.gateway import Gateway

STATE_KEY = "router"


def target_keys(targets: list[TargetConfig]) -> list[str]:
    keys: list[str] = []
    seen: dict[str, int] = {}
    for t in targets:
        key = t.virtual_key + (f":{t.model}" if t.model else "") + (f"@{t.label}" if t.label else "")
        seen[key] = seen.get(key, 0) + 1
        keys.append(key if seen[key] == 1 else f"{key}#{seen[key]}")
    return keys


@dataclass
class TargetState:
    key: str
    latency: LatencyStats
    breaker: CircuitBreaker | None = None
    limiter: ConcurrencyLimiter | None = None


@dataclass
class RouterState:
    targets: dict[str, TargetState] = field(default_factory=dict)


def router_state(gateway: Gateway) -> RouterState:
    state = gateway.state.get(STATE_KEY)
    if not isinstance(state, RouterState):
        state = gateway.state[STATE_KEY] = RouterState()
    return state


def bind_targets(
    gateway: Gateway, keyed: list[tuple[str, TargetConfig]], latency_window: int
) -> list[TargetState]:
    """The state of each configured target: kept from before a reload, reconfigured, or new."""
    state = router_state(gateway)
    gauge = gateway.metrics.gauge(
        "ferro_circuit_state", "Circuit breaker state per target (0 closed, 1 open, 2 half-open)", ["target"]
    )
    bound: list[TargetState] = []
    for key, target in keyed:
        ts = state.targets.get(key)
        if ts is None:
            ts = state.targets[key] = TargetState(key, LatencyStats(latency_window))
        ts.latency.resize(latency_window)
        cb = target.circuit_breaker
        if cb is None:
            ts.breaker = None
        elif ts.breaker is None:
            ts.breaker = CircuitBreaker(cb, on_change=_gauge_updater(gauge, key))
        else:
            ts.breaker.reconfigure(cb)
        if target.max_concurrency is None:
            ts.limiter = None
        elif ts.limiter is None:
            ts.limiter = ConcurrencyLimiter(target.max_concurrency, target.max_queue)
        else:
            ts.limiter.reconfigure(target.max_concurrency, target.max_queue)
        gauge.labels(key).set(STATE_VALUE[ts.breaker.state] if ts.breaker else 0)
        bound.append(ts)
    return bound


def _gauge_updater(gauge: Gauge, key: str) -> Callable[[CircuitBreaker, str], None]:
    def on_change(breaker: CircuitBreaker, new_state: str) -> None:
        gauge.labels(key).set(STATE_VALUE[new_state])
        if new_state == OPEN:  # show half-open on time even if no request looks at the target
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                return
            loop.call_later(breaker.config.timeout + 0.001, lambda: breaker.state)

    return on_change
