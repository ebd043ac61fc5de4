"""`budget`: a USD spend limit per gateway key (or per `user`), per window
(`daily|weekly|monthly|total`, UTC).

Before a request: one read of the caller's spend in the current window (none when no limit
applies to the caller); at or over the limit → 402 `insufficient_quota`. After the answer
(streams included): the request's `ex.cost_usd` (catalog prices × real usage, filled in by
the router) is added in the background. With `backend: redis|postgres` the spend is shared
by every sidecar and survives restarts. A backend outage fails closed (503) unless
`fail_open: true`: a budget that cannot be checked is not enforced silently.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

import msgspec

from ferro_proxy.chain import Filter, Next, register_filter
from ferro_proxy.config import Base, Duration
from ferro_proxy.errors import GatewayError
from ferro_proxy.exchange import Exchange, Reply
from filters.limits_backends import (
    MemorySpend,
    PostgresSpend,
    RedisSpend,
    ThrottledWarning,
    WriteBehind,
    caller_identity,
    check_backend,
    check_table_name,
    safe_component,
    user_of,
)

log = logging.getLogger("ferro_proxy.budget")

Window = Literal["daily", "weekly", "monthly", "total"]
_EXPIRY_GRACE = timedelta(days=7)  # spend of a finished window stays readable a while


class BudgetConfig(Base):
    backend: Literal["memory", "redis", "postgres"] = "memory"
    dsn: str | None = None
    scope: Literal["key", "user"] = "key"
    window: Window = "monthly"
    limit_usd: float | None = None  # for every key (or user) without a limit of its own
    limits: dict[str, float] = msgspec.field(default_factory=dict)  # key id (or user) -> USD
    key_budgets: bool = True  # use a gateway key's own budget_usd
    key_prefix: str = "ferro:budget:"  # redis
    table: str = "ferro_budget_spend"  # postgres
    timeout: Duration = 1.0
    fail_open: bool = False


def window_period(window: str, now: datetime) -> tuple[str, datetime | None]:
    """(name of the window `now` falls in, when the next one starts), in UTC."""
    day = datetime(now.year, now.month, now.day, tzinfo=UTC)
    if window == "daily":
        return "d" + day.strftime("%Y-%m-%d"), day + timedelta(days=1)
    if window == "weekly":
        year, week, weekday = now.isocalendar()
        return f"w{year}-W{week:02d}", day + timedelta(days=8 - weekday)
    if window == "monthly":
        first_next = datetime(now.year + now.month // 12, now.month % 12 + 1, 1, tzinfo=UTC)
        return "m" + day.strftime("%Y-%m"), first_next
    return "total", None


@register_filter
class Budget(Filter):
    name = "budget"
    type = "ratelimit"
    description = "USD spend limit per key or user per day/week/month/total (memory, Redis, Postgres)"
    Config = BudgetConfig

    def __init__(self, config: BudgetConfig, gateway: Any, plugin: Any = None) -> None:
        super().__init__(config, gateway, plugin)
        check_backend(
            config.backend,
            config.dsn,
            {"redis": ("redis", "rediss", "unix"), "postgres": ("postgresql", "postgres")},
        )
        check_table_name(config.table)
        if config.limit_usd is not None and config.limit_usd < 0:
            raise ValueError("limit_usd must be >= 0")
        for who, usd in config.limits.items():
            if usd < 0:
                raise ValueError(f"limits.{who} must be >= 0")
        if (
            config.limit_usd is None
            and not config.limits
            and not (config.key_budgets and config.scope == "key")
        ):
            raise ValueError("no budget to enforce: set limit_usd, limits, or key_budgets with scope: key")
        self.store: MemorySpend | RedisSpend | PostgresSpend | None = None
        metrics = gateway.metrics
        self._exceeded = metrics.counter(
            "ferro_budget_exceeded_total", "Requests refused because a budget was spent", ["scope"]
        ).labels(config.scope)
        self._backend_errors = metrics.counter(
            "ferro_limits_backend_errors_total", "Failed calls to a rate-limit/budget backend", ["filter"]
        ).labels(self.name)
        self._warn = ThrottledWarning(log, "budget")
        self._writes = WriteBehind(self._write_failed)

    async def start(self) -> None:
        c = self.config
        if c.backend == "redis":
            assert c.dsn is not None
            self.store = RedisSpend(c.dsn, c.key_prefix, c.timeout)
        elif c.backend == "postgres":
            assert c.dsn is not None
            self.store = PostgresSpend(c.dsn, c.table, c.timeout)
            try:
                await self.store.pool()
            except Exception as exc:  # keep starting: requests will retry (and fail closed)
                self._warn(exc, "will retry on the next request")
        else:
            spend = self.gateway.state.setdefault("budget_spend", {})
            self.store = MemorySpend(spend.setdefault(f"{self.label}|{c.scope}|{c.window}", {}))

    async def close(self) -> None:
        await self._writes.drain()
        if self.store is not None:
            await self.store.close()

    # ------------------------------------------------------------ the filter

    async def handle(self, ex: Exchange, next: Next) -> Reply:
        if self.store is None:
            return await next(ex)
        who, scope = self._who(ex)
        period, resets = window_period(self.config.window, datetime.now(UTC))
        limit = self._limit_for(ex, who)
        if limit is not None:
            spent = await self._spent(scope, period)
            if spent is not None:
                if spent >= limit:
                    self._exceeded.inc()
                    raise self._refusal(spent, limit, resets)
                ex.response_headers["x-ferro-budget-limit-usd"] = f"{limit:g}"
                ex.response_headers["x-ferro-budget-spent-usd"] = f"{spent:.8f}"
        expires = (resets + _EXPIRY_GRACE).timestamp() if resets is not None else None
        try:
            reply = await next(ex)
        except BaseException:
            self._record(ex, scope, period, expires)
            raise
        reply.on_complete(lambda e, r, error: self._record(e, scope, period, expires))
        return reply

    def _who(self, ex: Exchange) -> tuple[str | None, str]:
        """(the name `limits:` is keyed by, the storage scope) for this request's caller."""
        if self.config.scope == "user":
            user = user_of(ex)
            return user, "user:" + (safe_component(user) if user else "-")
        key_id = getattr(ex.gateway_key, "id", None)
        return (str(key_id) if key_id is not None else None), caller_identity(ex)

    def _limit_for(self, ex: Exchange, who: str | None) -> float | None:
        if who is not None and who in self.config.limits:
            return self.config.limits[who]
        if self.config.key_budgets and self.config.scope == "key":
            own = getattr(ex.gateway_key, "budget_usd", None)
            if isinstance(own, int | float):
                return float(own)
        return self.config.limit_usd

    async def _spent(self, scope: str, period: str) -> float | None:
        """The spend so far, or None when it cannot be read and fail_open lets the request pass."""
        assert self.store is not None
        try:
            await self._writes.settle((f"{period}|{scope}",))
            return await self.store.get(scope, period)
        except Exception as exc:
            self._backend_errors.inc()
            if not self.config.fail_open:
                self._warn(exc, "refusing requests until it is back (fail_open: false)")
                raise GatewayError(
                    503,
                    "the budget cannot be checked right now; try again shortly",
                    code="budget_unavailable",
                    type="api_error",
                ) from None
            self._warn(exc, "letting requests through without a budget check (fail_open: true)")
            return None

    def _refusal(self, spent: float, limit: float, resets: datetime | None) -> GatewayError:
        who = "user" if self.config.scope == "user" else "key"
        when = f"it resets at {resets.strftime('%Y-%m-%dT%H:%M:%SZ')}" if resets else "it does not reset"
        return GatewayError(
            402,
            f"Budget exceeded for this {who}: ${spent:.6f} spent of ${limit:g} "
            f"({self.config.window} budget; {when}).",
            code="insufficient_quota",
            type="insufficient_quota",
            retryable=False,
        )

    def _record(self, ex: Exchange, scope: str, period: str, expires: float | None) -> None:
        cost = ex.cost_usd
        if not cost or self.store is None:
            return
        if isinstance(self.store, MemorySpend):
            self.store.add_now(scope, period, cost)
        else:
            self._writes.schedule((f"{period}|{scope}",), self.store.add(scope, period, cost, expires))

    def _write_failed(self, exc: BaseException) -> None:
        self._backend_errors.inc()
        self._warn(exc, "spend could not be recorded")

    def health(self) -> dict[str, Any] | None:
        return {"backend": self.config.backend, "scope": self.config.scope, "window": self.config.window}
