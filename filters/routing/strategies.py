"""The eight `strategy.mode`s: each turns the targets able to serve a request into the
order the router tries them in.

`single`, `conditional` and `content-based` pick one target. The pool modes (`fallback`,
`loadbalance`, `ab-test`, `least-latency`, `cost-optimized`) return several, best first;
the router moves down the list when one fails or its circuit is open.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ferro_proxy.config import StrategyConfig, TargetConfig
from filters.routing.conditions import RequestView, Rule, first_match
from filters.routing.state import TargetState

if TYPE_CHECKING:
    from providers.base import Provider
    from providers.catalog import Catalog

POOL_MODES = frozenset({"fallback", "loadbalance", "ab-test", "least-latency", "cost-optimized"})


@dataclass(slots=True)
class Route:
    """One configured target, bound to its provider and live state."""

    key: str
    target: TargetConfig
    provider: Provider
    state: TargetState
    label: str

    @property
    def weight(self) -> float:
        return self.target.weight


@dataclass(slots=True)
class Candidate:
    route: Route
    model: str  # what this target is asked for (its `model:` rewrite, or the request's)


@dataclass
class Context:
    view: RequestView
    strategy: StrategyConfig
    rules: list[Rule]
    catalog: Catalog | None
    rng: random.Random
    notes: dict[str, str] = field(default_factory=dict)  # why a target was left out


Order = Callable[[Context, list[Candidate], list[Candidate]], list[Candidate]]


def single(ctx: Context, usable: list[Candidate], serving: list[Candidate]) -> list[Candidate]:
    return usable[:1]


def fallback(ctx: Context, usable: list[Candidate], serving: list[Candidate]) -> list[Candidate]:
    return serving


def _weighted_shuffle(items: list[Candidate], rng: random.Random) -> list[Candidate]:
    """A random order where each item comes first with probability weight / total."""
    keyed = [(rng.random() ** (1.0 / c.route.weight), i) for i, c in enumerate(items)]
    keyed.sort(reverse=True)
    return [items[i] for _, i in keyed]


def _drain_zero_weight(ctx: Context, serving: list[Candidate]) -> list[Candidate]:
    weighted = [c for c in serving if c.route.weight > 0]
    for c in serving:
        if c.route.weight <= 0:
            ctx.notes[c.route.key] = "drained (weight 0)"
    return weighted


def loadbalance(ctx: Context, usable: list[Candidate], serving: list[Candidate]) -> list[Candidate]:
    return _weighted_shuffle(_drain_zero_weight(ctx, serving), ctx.rng)


def _sticky_point(user: str) -> float:
    digest = hashlib.blake2b(user.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


def ab_test(ctx: Context, usable: list[Candidate], serving: list[Candidate]) -> list[Candidate]:
    """One variant by weight (the same one for the same `user`), the others as fallbacks."""
    pool = _drain_zero_weight(ctx, serving)
    if not pool:
        return pool
    body = ctx.view.ex.body or {}
    user = body.get("user")
    if isinstance(user, str) and user:
        point = _sticky_point(user) * sum(c.route.weight for c in pool)
        chosen = pool[-1]
        for c in pool:
            point -= c.route.weight
            if point < 0:
                chosen = c
                break
        rest = [c for c in pool if c is not chosen]
        return [chosen, *_weighted_shuffle(rest, ctx.rng)]
    return _weighted_shuffle(pool, ctx.rng)


def least_latency(ctx: Context, usable: list[Candidate], serving: list[Candidate]) -> list[Candidate]:
    """Never-measured targets first (in config order), then by rolling median latency."""

    def rank(c: Candidate) -> tuple[int, float]:
        p50 = c.route.state.latency.p50
        return (0, 0.0) if p50 is None else (1, p50)

    return sorted(serving, key=rank)


def estimate_cost(ctx: Context, c: Candidate) -> float | None:
    """USD this request would cost on `c`, from the catalog; None when unpriced."""
    info = ctx.catalog.get(c.route.provider.name, c.model) if ctx.catalog is not None else None
    if info is None or info.input_per_million is None:
        return None
    ex = ctx.view.ex
    size = len(ex.raw_body) if ex.raw_body else len(ctx.view.prompt)
    prompt_tokens = size / 4  # ~4 bytes a token: only the order between targets matters
    body = ex.body or {}
    out = body.get("max_completion_tokens") or body.get("max_tokens")
    output_tokens = out if isinstance(out, int) and out > 0 else ctx.strategy.expected_output_tokens
    return (prompt_tokens * info.input_per_million + output_tokens * (info.output_per_million or 0.0)) / 1e6


def cost_optimized(ctx: Context, usable: list[Candidate], serving: list[Candidate]) -> list[Candidate]:
    """Cheapest estimated cost first; unpriced targets last (`fallback`), dropped (`skip`)
    or ranked as if free (`allow`)."""
    priced: list[tuple[float, int, Candidate]] = []
    unpriced: list[Candidate] = []
    for i, c in enumerate(serving):
        cost = estimate_cost(ctx, c)
        if cost is None:
            unpriced.append(c)
        else:
            priced.append((cost, i, c))
    priced.sort(key=lambda t: (t[0], t[1]))
    ordered = [c for _, _, c in priced]
    policy = ctx.strategy.unpriced
    if policy == "skip":
        for c in unpriced:
            ctx.notes[c.route.key] = "skipped (no price in the model catalog)"
        return ordered
    if policy == "allow":
        return unpriced + ordered
    return ordered + unpriced


def _by_rule(ctx: Context, usable: list[Candidate], serving: list[Candidate]) -> list[Candidate]:
    rule = first_match(ctx.rules, ctx.view)
    if rule is not None:
        for c in usable:
            if rule.target_key in (c.route.target.virtual_key, c.route.target.label):
                return [c]
        ctx.notes[rule.target_key] = f"matched {rule.describe} but cannot serve this endpoint"
        return []
    return usable[:1]


STRATEGIES: dict[str, Order] = {
    "single": single,
    "fallback": fallback,
    "loadbalance": loadbalance,
    "conditional": _by_rule,
    "content-based": _by_rule,
    "ab-test": ab_test,
    "least-latency": least_latency,
    "cost-optimized": cost_optimized,
}
