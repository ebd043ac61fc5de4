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
