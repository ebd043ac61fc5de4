"""Plumbing shared by the response cache, the rate limiter and the budget filter.

- who is calling (`caller_identity`): the gateway key's id, else a hash of the client's own
  provider key; a raw secret never becomes part of a cache key, a Redis key or a label;
- Redis clients (`redis_client`) with short timeouts, so an outage costs milliseconds;
- `WriteBehind`: backend writes that run after the answer went out, with a per-key barrier
  so the next check in this process reads its own earlier writes;
- `ThrottledWarning`: one warning per interval while a backend is down, not one per request.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import re
import time
from collections.abc import Coroutine, Iterable
from typing import Any
from urllib.parse import urlsplit

from ferro_proxy.exchange import Exchange

ANONYMOUS = "anonymous"
_SAFE = re.compile(r"^[A-Za-z0-9_.:@/\-]{1,64}$")


def short_hash(value: str) -> str:
    return hashlib.blake2b(value.encode(), digest_size=8).hexdigest()


def caller_identity(ex: Exchange) -> str:
    """A stable, non-secret name for whoever sent the request."""
    key_id = getattr(ex.gateway_key, "id", None)
    if key_id is not None:
        return "key:" + safe_component(str(key_id))
    if ex.client_api_key:
        return "byok:" + short_hash(ex.client_api_key)
    return ANONYMOUS


def safe_component(value: str) -> str:
    """`value` if it is short and plain, else a hash of it (for Redis keys and table rows)."""
    return value if _SAFE.match(value) else "h:" + short_hash(value)


def user_of(ex: Exchange) -> str | None:
    user = ex.body.get("user") if ex.body else None
    return user if isinstance(user, str) and user else None


def dsn_without_password(dsn: str) -> str:
    parts = urlsplit(dsn)
    if parts.password is None:
        return dsn
    netloc = parts.netloc.rsplit("@", 1)[1]
    user = parts.username or ""
    return parts._replace(netloc=f"{user}:***@{netloc}").geturl()


def check_backend(backend: str, dsn: str | None, schemes: dict[str, tuple[str, ...]]) -> None:
    """Raise ValueError (a config error) when a networked backend has no usable DSN."""
    wanted = schemes.get(backend)
    if wanted is None:
        return
    if not dsn:
        raise ValueError(f"backend {backend!r} needs a dsn (e.g. {wanted[0]}://127.0.0.1/...)")
    if not dsn.startswith(tuple(s + "://" for s in wanted)):
        raise ValueError(
            f"dsn for backend {backend!r} must start with {' or '.join(s + '://' for s in wanted)}"
        )


def redis_client(dsn: str, timeout: float) -> Any:
    import redis.asyncio as redis_asyncio

    return redis_asyncio.from_url(
        dsn,
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
        retry_on_timeout=False,
        health_check_interval=30,
    )


class ThrottledWarning:
    """Log a backend failure at most once per `interval` seconds (counting the rest)."""

    def __init__(self, logger: logging.Logger, what: str, interval: float = 10.0) -> None:
        self.logger = logger
        self.what = what
        self.interval = interval
        self._last = 0.0
        self._suppressed = 0

    def __call__(self, exc: BaseException, consequence: str) -> None:
        now = time.monotonic()
        if now - self._last < self.interval:
            self._suppressed += 1
            return
        self._last = now
        self.logger.warning(
            "%s backend unavailable (%s: %s); %s%s",
            self.what,
            type(exc).__name__,
            str(exc)[:200],
            consequence,
            f" ({self._suppressed} more since the last warning)" if self._suppressed else "",
        )
        self._suppressed = 0


class WriteBehind:
    """Backend writes that run in the background, after the client has its answer.

    `schedule(keys, coro)` starts the write; `settle(keys)` waits for pending writes that
    touch any of `keys` (normally none are pending, so it costs nothing); `drain()` waits
    for all of them (on close). Failures are reported through `on_error`.
    """

    def __init__(self, on_error: Any) -> None:
        self._on_error = on_error
        self._pending: dict[str, set[asyncio.Task[Any]]] = {}
        self._all: set[asyncio.Task[Any]] = set()

    def schedule(self, keys: Iterable[str], coro: Coroutine[Any, Any, Any]) -> None:
        task = asyncio.get_running_loop().create_task(self._run(coro))
        keys = tuple(keys)
        self._all.add(task)
        for key in keys:
            self._pending.setdefault(key, set()).add(task)

        def done(t: asyncio.Task[Any]) -> None:
            self._all.discard(t)
            for key in keys:
                tasks = self._pending.get(key)
                if tasks is not None:
                    tasks.discard(t)
                    if not tasks:
                        del self._pending[key]

        task.add_done_callback(done)

    async def _run(self, coro: Coroutine[Any, Any, Any]) -> None:
        try:
            await coro
        except Exception as exc:
            self._on_error(exc)

    async def settle(self, keys: Iterable[str]) -> None:
        if not self._pending:
            return
        waiting = [t for key in keys for t in self._pending.get(key, ())]
        if waiting:
            await asyncio.gather(*waiting, return_exceptions=True)

    async def drain(self) -> None:
        if self._all:
            await asyncio.gather(*list(self._all), return_exceptions=True)


# ---------------------------------------------------------------- token buckets


class BucketDecision:
    """The outcome of one atomic check over several buckets: levels are after the take."""

    __slots__ = ("allowed", "wait", "levels")

    def __init__(self, allowed: bool, wait: float, levels: list[float]) -> None:
        self.allowed = allowed
        self.wait = wait
        self.levels = levels


# A bucket is (storage key, refill rate per second, capacity, cost). `take` takes every cost
# or none: a request passes only when each bucket holds min(cost, capacity), so a single
# request larger than a bucket still passes when the bucket is full (and leaves it in debt).
# `charge` adds a cost (or, negative, a refund) after the fact, without checking.
Bucket = tuple[str, float, float, float]

_BUCKET_SCRIPT = """
local clock = redis.call('TIME')
local now = tonumber(clock[1]) + tonumber(clock[2]) / 1000000
local charge = ARGV[1] == 'charge'
local levels = {}
local ok = 1
local wait = 0
for i = 1, #KEYS do
  local rate = tonumber(ARGV[i * 3 - 1])
  local cap = tonumber(ARGV[i * 3])
  local cost = tonumber(ARGV[i * 3 + 1])
  local state = redis.call('HMGET', KEYS[i], 'l', 't')
  local level = tonumber(state[1])
  local stamp = tonumber(state[2])
  if level == nil or stamp == nil then
    level = cap
    stamp = now
  end
  if now > stamp then
    level = math.min(cap, level + (now - stamp) * rate)
  end
  levels[i] = level
  if not charge then
    local need = math.min(cost, cap)
    if level < need then
      ok = 0
      local w = (need - level) / rate
      if w > wait then wait = w end
    end
  end
end
local out = {ok, tostring(wait)}
for i = 1, #KEYS do
  local rate = tonumber(ARGV[i * 3 - 1])
  local cap = tonumber(ARGV[i * 3])
  local cost = tonumber(ARGV[i * 3 + 1])
  local level = levels[i]
  if ok == 1 then
    level = math.min(cap, level - cost)
    redis.call('HSET', KEYS[i], 'l', tostring(level), 't', tostring(now))
    redis.call('PEXPIRE', KEYS[i], math.ceil((cap - level) / rate * 1000) + 1000)
  end
  out[i + 2] = tostring(level)
end
return out
"""


def _refill(level: float, stamp: float, now: float, rate: float, cap: float) -> float:
    return min(cap, level + (now - stamp) * rate) if now > stamp else level


class MemoryBuckets:
    """Token buckets in this process (each sidecar limits on its own)."""

    def __init__(self, max_buckets: int = 100_000) -> None:
        self._state: dict[str, tuple[float, float, float]] = {}  # key -> (level, stamp, full again at)
        self._max = max_buckets

    async def take(self, buckets: list[Bucket]) -> BucketDecision:
        return self._apply(buckets, charge=False)

    async def charge(self, buckets: list[Bucket]) -> None:
        self._apply(buckets, charge=True)

    def charge_now(self, buckets: list[Bucket]) -> None:
        self._apply(buckets, charge=True)

    def _apply(self, buckets: list[Bucket], charge: bool) -> BucketDecision:
        now = time.monotonic()
        state = self._state
        levels: list[float] = []
        allowed, wait = True, 0.0
        for key, rate, cap, cost in buckets:
            level, stamp, _ = state.get(key, (cap, now, now))
            level = _refill(level, stamp, now, rate, cap)
            levels.append(level)
            need = min(cost, cap)
            if not charge and level < need:
                allowed, wait = False, max(wait, (need - level) / rate)
        if allowed:
            for i, (key, rate, cap, cost) in enumerate(buckets):
                levels[i] = min(cap, levels[i] - cost)
                state[key] = (levels[i], now, now + (cap - levels[i]) / rate)
            if len(state) > self._max:
                self._forget_full(now)
        return BucketDecision(allowed, wait, levels)

    def _forget_full(self, now: float) -> None:
        """Drop buckets that are full again (as good as new); the oldest half if none are."""
        idle = [k for k, (_, _, full_at) in self._state.items() if full_at <= now]
        for key in idle or list(self._state)[: len(self._state) // 2]:
            del self._state[key]

    async def close(self) -> None:
        self._state.clear()


class RedisBuckets:
    """Token buckets in Redis, checked and taken in one server-side script (one round trip),
    on Redis's clock, so every sidecar in a fleet shares the same limits."""

    def __init__(self, dsn: str, prefix: str, timeout: float) -> None:
        self.prefix = prefix
        self._client: Any = redis_client(dsn, timeout)
        self._script = self._client.register_script(_BUCKET_SCRIPT)

    async def take(self, buckets: list[Bucket]) -> BucketDecision:
        return await self._run("take", buckets)

    async def charge(self, buckets: list[Bucket]) -> None:
        await self._run("charge", buckets)

    async def _run(self, mode: str, buckets: list[Bucket]) -> BucketDecision:
        keys = [self.prefix + b[0] for b in buckets]
        args: list[Any] = [mode]
        for _key, rate, cap, cost in buckets:
            args += [repr(float(rate)), repr(float(cap)), repr(float(cost))]
        out = await self._script(keys=keys, args=args)
        return BucketDecision(int(out[0]) == 1, float(out[1]), [float(v) for v in out[2:]])

    async def close(self) -> None:
        await self._client.aclose()


# ---------------------------------------------------------------- spend (budgets)

_TABLE_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")
_PG_LOCK_ID = 0x6665_7272_6F62  # "ferrob": serializes table creation across sidecars


def check_table_name(name: str) -> None:
    if not _TABLE_NAME.match(name):
        raise ValueError(f"table {name!r} must be a plain SQL identifier (letters, digits, _)")


class MemorySpend:
    """Spend in this process, in a dict the gateway keeps across config reloads."""

    def __init__(self, table: dict[str, dict[str, float]]) -> None:
        self._by_period = table  # period -> scope -> USD

    async def get(self, scope: str, period: str) -> float:
        return self._by_period.get(period, {}).get(scope, 0.0)

    async def add(self, scope: str, period: str, usd: float, expires_at: float | None) -> None:
        self.add_now(scope, period, usd)

    def add_now(self, scope: str, period: str, usd: float) -> None:
        for old in [p for p in self._by_period if p != period]:
            del self._by_period[old]  # a new window started: earlier spend no longer counts
        spent = self._by_period.setdefault(period, {})
        spent[scope] = spent.get(scope, 0.0) + usd

    async def close(self) -> None:
        """The spend stays with the gateway (kept across reloads)."""


class RedisSpend:
    """Spend as Redis floats (INCRBYFLOAT), one key per scope and window, expiring after it."""

    def __init__(self, dsn: str, prefix: str, timeout: float) -> None:
        self.prefix = prefix
        self._client: Any = redis_client(dsn, timeout)

    def _key(self, scope: str, period: str) -> str:
        return f"{self.prefix}{period}|{scope}"

    async def get(self, scope: str, period: str) -> float:
        value = await self._client.get(self._key(scope, period))
        return float(value) if value else 0.0

    async def add(self, scope: str, period: str, usd: float, expires_at: float | None) -> None:
        key = self._key(scope, period)
        pipe = self._client.pipeline(transaction=False)
        pipe.incrbyfloat(key, usd)
        if expires_at is not None:
            pipe.expireat(key, int(expires_at))
        await pipe.execute()

    async def close(self) -> None:
        await self._client.aclose()


class PostgresSpend:
    """Spend rows `(scope, period) -> spend_usd` in a table created on first use.

    The pool opens lazily, so a database that is down at start does not stop the gateway;
    after a failed connect it is retried at most once a second.
    """

    def __init__(self, dsn: str, table: str, timeout: float) -> None:
        check_table_name(table)
        self.dsn = dsn
        self.table = table
        self.timeout = timeout
        self._pool: Any = None
        self._retry_at = 0.0
        self._lock = asyncio.Lock()

    async def pool(self) -> Any:
        if self._pool is not None:
            return self._pool
        if time.monotonic() < self._retry_at:
            raise ConnectionError("the budget database was unreachable a moment ago")
        async with self._lock:
            if self._pool is None:
                try:
                    self._pool = await self._open()
                except Exception:
                    self._retry_at = time.monotonic() + 1.0
                    raise
        return self._pool

    async def _open(self) -> Any:
        import asyncpg

        pool = await asyncpg.create_pool(
            self.dsn, min_size=1, max_size=4, timeout=self.timeout, command_timeout=self.timeout
        )
        try:
            async with pool.acquire() as conn, conn.transaction():
                await conn.execute("SELECT pg_advisory_xact_lock($1)", _PG_LOCK_ID)
                await conn.execute(
                    f"CREATE TABLE IF NOT EXISTS {self.table} ("
                    " scope TEXT NOT NULL, period TEXT NOT NULL,"
                    " spend_usd DOUBLE PRECISION NOT NULL DEFAULT 0,"
                    " updated_at TIMESTAMPTZ NOT NULL DEFAULT now(),"
                    " PRIMARY KEY (scope, period))"
                )
        except BaseException:
            await pool.close()
            raise
        return pool

    async def get(self, scope: str, period: str) -> float:
        pool = await self.pool()
        value = await pool.fetchval(
            f"SELECT spend_usd FROM {self.table} WHERE scope = $1 AND period = $2", scope, period
        )
        return float(value) if value is not None else 0.0

    async def add(self, scope: str, period: str, usd: float, expires_at: float | None) -> None:
        pool = await self.pool()
        await pool.execute(
            f"INSERT INTO {self.table} (scope, period, spend_usd) VALUES ($1, $2, $3)"
            f" ON CONFLICT (scope, period) DO UPDATE"
            f" SET spend_usd = {self.table}.spend_usd + EXCLUDED.spend_usd, updated_at = now()",
            scope,
            period,
            usd,
        )

    async def close(self) -> None:
        if self._pool is not None:
            await self._pool.close()
            self._pool = None
