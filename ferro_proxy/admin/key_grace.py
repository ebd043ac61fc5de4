"""What key validation does while the key store does not answer.

A key the store last called active keeps working for `auth.stale_grace` seconds counted
from that answer; a key the store never vouched for, or last called revoked or expired, or
whose `expires_at` has passed since, is not served from memory. Other keys get 503
`auth_unavailable` with `Retry-After`. After a failed lookup the store is left alone for
`PROBE_INTERVAL` seconds, so an outage costs a request no waiting; the first lookup after
that probes it again, and its answer (a revocation included) counts at once.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

from ferro_proxy.config import AuthConfig
from ferro_proxy.errors import GatewayError
from ferro_proxy.stores.records import KeyRecord
from ferro_proxy.stores.status import RETRY_AFTER, WARN_INTERVAL, StoreStatus, StoreUnavailable

if TYPE_CHECKING:
    from ferro_proxy.gateway import Gateway

log = logging.getLogger("ferro_proxy.auth")

LOOKUP_TIMEOUT = 2.0  # a primary-key read; longer means the store is as good as down
PROBE_INTERVAL = 1.0
_MAX_REMEMBERED = 10_000


def auth_unavailable() -> GatewayError:
    return GatewayError(
        503,
        "the gateway key cannot be checked right now (the key store is unavailable); try again shortly",
        code="auth_unavailable",
        type="api_error",
        retry_after=RETRY_AFTER,
    )


class StaleGrace:
    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway
        self._vouched: dict[str, tuple[float, KeyRecord]] = {}  # digest -> (monotonic, record)
        self._quiet_until = 0.0
        self._last_warning = float("-inf")
        self._local = StoreStatus("key store")  # for a store without a database status (or a timeout)
        self.stale = gateway.metrics.counter(
            "ferro_auth_stale_total", "Requests let in by a key validated before the key store went down"
        )

    @property
    def grace(self) -> float:
        runtime = self.gateway.runtime  # the live config: a reload changes it at once
        auth = runtime.config.auth if runtime is not None else AuthConfig()
        return float(auth.stale_grace)

    def should_probe(self) -> bool:
        return time.monotonic() >= self._quiet_until

    def answered(self, digest: str, record: KeyRecord | None) -> None:
        """The store answered for `digest`: remember an active key, forget anything else."""
        self._status().ok()
        self._vouched.pop(digest, None)
        if record is not None and record.status() == "active" and self.grace > 0:
            if len(self._vouched) >= _MAX_REMEMBERED:
                self._vouched.pop(next(iter(self._vouched)))
            self._vouched[digest] = (time.monotonic(), record)

    def store_ok(self) -> None:
        self._status().ok()

    def failed(self, exc: BaseException) -> None:
        now = time.monotonic()
        self._quiet_until = now + PROBE_INTERVAL
        status = self._status()
        if status is self._local or not isinstance(exc, StoreUnavailable):
            status.failed(exc)  # the database did not see this one: a timeout, or no database
        if now - self._last_warning < WARN_INTERVAL:
            return
        self._last_warning = now
        grace = self.grace
        log.warning(
            "gateway keys cannot be checked (%s); %s",
            type(exc).__name__,
            f"keys validated in the last {grace:g} s keep working, others get 503 auth_unavailable"
            if grace > 0
            else "every gateway key gets 503 auth_unavailable (auth.stale_grace: 0)",
        )

    def fallback(self, digest: str) -> KeyRecord:
        """The record to serve while the store is down, or raise 503 auth_unavailable."""
        seen = self._vouched.get(digest)
        if seen is None:
            raise auth_unavailable()
        vouched_at, record = seen
        if time.monotonic() - vouched_at > self.grace:
            self._vouched.pop(digest, None)
            raise auth_unavailable()
        self.stale.inc()
        return record  # its expires_at is still checked by the caller

    def forget(self) -> None:
        """Keys changed here: what the store said before may be stale, revocations included."""
        self._vouched.clear()

    def _status(self) -> StoreStatus:
        hub = self.gateway.services.get("stores")
        status = hub.status_of("keys") if hub is not None else None
        return status if status is not None else self._local
