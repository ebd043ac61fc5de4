"""Per-target concurrency limits: at most `max_concurrency` upstream calls at once, up to
`max_queue` more waiting in line (first come, first served); beyond that the target is
saturated and the router answers 429 `provider_saturated` (or tries another target)."""

from __future__ import annotations

import asyncio
import time
from collections import deque

from ferro_proxy.errors import GatewayError


class Saturated(Exception):
    """The target's queue is full (or the wait would pass the request's deadline)."""


class ConcurrencyLimiter:
    def __init__(self, max_concurrency: int, max_queue: int) -> None:
        self.max_concurrency = max_concurrency
        self.max_queue = max_queue
        self.active = 0
        self._waiters: deque[asyncio.Future[None]] = deque()

    @property
    def queued(self) -> int:
        return len(self._waiters)

    def reconfigure(self, max_concurrency: int, max_queue: int) -> None:
        self.max_concurrency = max_concurrency
        self.max_queue = max_queue
        self._wake()

    async def acquire(self, deadline: float) -> None:
        """Take a slot, waiting in line until `deadline` (time.monotonic()) at most."""
        if self.active < self.max_concurrency and not self._waiters:
            self.active += 1
            return
        if len(self._waiters) >= self.max_queue:
            raise Saturated()
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            async with asyncio.timeout(max(0.0, deadline - time.monotonic())):
                await waiter
        except BaseException:
            if waiter.done() and not waiter.cancelled():
                self.release()  # the slot was handed over just as we gave up: pass it on
            else:
                waiter.cancel()
                try:
                    self._waiters.remove(waiter)
                except ValueError:
                    pass
            raise
        # the releaser counted this slot for us

    def release(self) -> None:
        self.active -= 1
        self._wake()

    def _wake(self) -> None:
        while self._waiters and self.active < self.max_concurrency:
            waiter = self._waiters.popleft()
            if not waiter.done():
                self.active += 1
                waiter.set_result(None)


def saturated_error(target: str, limiter: ConcurrencyLimiter) -> GatewayError:
    return GatewayError(
        429,
        f"target {target} is saturated ({limiter.max_concurrency} in flight, {limiter.max_queue} queued)",
        code="provider_saturated",
        retryable=True,
    )
