"""Where the response cache keeps its answers: in this process (LRU) or in Redis (shared by
every sidecar pointing at it).

An entry is the answer's JSON bytes plus the wall-clock time it was stored, so a request can
ask for answers younger than its own `x-ferro-cache-ttl`.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from typing import Any, Protocol

from filters.limits_backends import redis_client


class CacheBackend(Protocol):
    async def get(self, key: str) -> tuple[float, bytes] | None:
        """(stored_at epoch seconds, body) or None."""

    async def set(self, key: str, body: bytes, ttl: float) -> None: ...

    async def close(self) -> None: ...


class MemoryCache:
    """A bounded LRU: at most `max_entries` answers, each dropped `ttl` seconds after storing."""

    def __init__(self, max_entries: int) -> None:
        self.max_entries = max_entries
        self._entries: OrderedDict[str, tuple[float, float, bytes]] = OrderedDict()

    async def get(self, key: str) -> tuple[float, bytes] | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        stored_at, expires_at, body = entry
        if time.time() >= expires_at:
            del self._entries[key]
            return None
        self._entries.move_to_end(key)
        return stored_at, body

    async def set(self, key: str, body: bytes, ttl: float) -> None:
        now = time.time()
        self._entries[key] = (now, now + ttl, body)
        self._entries.move_to_end(key)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)

    def __len__(self) -> int:
        return len(self._entries)

    async def close(self) -> None:
        self._entries.clear()


class RedisCache:
    """Entries as plain Redis strings `<stored_at>\\n<body>` with a Redis-side expiry."""

    def __init__(self, dsn: str, prefix: str, timeout: float) -> None:
        self.prefix = prefix
        self._client: Any = redis_client(dsn, timeout)

    async def get(self, key: str) -> tuple[float, bytes] | None:
        value = await self._client.get(self.prefix + key)
        if not value:
            return None
        stamp, sep, body = value.partition(b"\n")
        if not sep:
            return None
        try:
            return float(stamp), body
        except ValueError:
            return None

    async def set(self, key: str, body: bytes, ttl: float) -> None:
        stamp = f"{time.time():.3f}\n".encode()
        await self._client.set(self.prefix + key, stamp + body, px=max(1, int(ttl * 1000)))

    async def close(self) -> None:
        await self._client.aclose()
