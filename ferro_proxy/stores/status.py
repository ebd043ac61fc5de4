"""Whether each state store answers, as its last calls saw it, and the typed error a caller
gets while it does not.

A SQL `Database` marks its `StoreStatus` up after every call that worked and down after
one that failed for want of the store (connection refused or reset, timeout, a locked or
unreadable SQLite file); such a failure becomes `StoreUnavailable`, a 503 `api_error`
with `Retry-After`, so no caller turns an outage into a 500. While a store is down one
warning is logged per `WARN_INTERVAL` seconds, with the error's class only (a driver's
message can name hosts or users). `/health` shows each area's state as a category
(`store_status`), `/metrics` has `ferro_store_up{store}`.
"""

from __future__ import annotations

import logging
import sqlite3
import time
from typing import TYPE_CHECKING, Any

from ferro_proxy.errors import GatewayError
from ferro_proxy.health import HEALTH_SECTIONS

if TYPE_CHECKING:
    from ferro_proxy.gateway import Gateway

log = logging.getLogger("ferro_proxy.stores")

WARN_INTERVAL = 30.0
RETRY_AFTER = 5.0  # what a client is told to wait while a store is down
# SQLSTATE classes of a server that is away: connection (08), resources (53),
# operator intervention such as a shutdown (57P), system error (58).
_OUTAGE_SQLSTATES = ("08", "53", "57P", "58")
_CLOSED_CONNECTION = ("no active connection", "connection closed")


def is_outage(exc: BaseException) -> bool:
    """Whether `exc` means the store cannot be reached (not a bad statement or a conflict)."""
    if isinstance(exc, OSError | TimeoutError):
        return True
    if isinstance(exc, sqlite3.OperationalError):  # locked, disk I/O error, cannot open
        return True
    if type(exc) is sqlite3.DatabaseError:  # "file is not a database", a malformed image
        return True
    if isinstance(exc, ValueError) and str(exc).lower() in _CLOSED_CONNECTION:  # aiosqlite
        return True
    module = type(exc).__module__ or ""
    if module.startswith("asyncpg"):
        sqlstate = getattr(exc, "sqlstate", None) or ""
        if sqlstate.startswith(_OUTAGE_SQLSTATES):
            return True
        names = {c.__name__ for c in type(exc).__mro__}
        return bool(names & {"PostgresConnectionError", "ConnectionDoesNotExistError", "InterfaceError"})
    return False


def failure_category(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "timeout"
    if isinstance(exc, sqlite3.OperationalError) and "locked" in str(exc).lower():
        return "locked"
    if isinstance(exc, sqlite3.Error):
        return "io_error"
    return "unreachable"


class StoreUnavailable(GatewayError):
    """A store needed to answer is down: 503, safe to show (no driver text)."""

    def __init__(self, what: str = "state") -> None:
        super().__init__(
            503,
            f"the gateway's {what} store is unavailable right now; try again shortly",
            code="store_unavailable",
            type="api_error",
            retry_after=RETRY_AFTER,
        )


class StoreStatus:
    """Up or down as the store's last calls saw it; a throttled warning while down."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.up = True
        self.category: str | None = None
        self.down_since: float | None = None  # monotonic
        self._last_warning = float("-inf")
        self._suppressed = 0

    def ok(self) -> None:
        if self.up:
            return
        down_for = time.monotonic() - (self.down_since or time.monotonic())
        log.info("%s reachable again after %.1f s", self.name, down_for)
        self.up, self.category, self.down_since, self._suppressed = True, None, None, 0

    def failed(self, exc: BaseException, consequence: str = "") -> None:
        now = time.monotonic()
        self.category = failure_category(exc)
        if self.up:
            self.up, self.down_since = False, now
        if now - self._last_warning < WARN_INTERVAL:
            self._suppressed += 1
            return
        self._last_warning = now
        more = f" ({self._suppressed} more failures since the last warning)" if self._suppressed else ""
        log.warning(
            "%s unavailable (%s, %s)%s%s",
            self.name,
            self.category,
            type(exc).__name__,
            f"; {consequence}" if consequence else "",
            more,
        )
        self._suppressed = 0

    def view(self) -> dict[str, Any]:
        if self.up:
            return {"status": "up"}
        since = self.down_since if self.down_since is not None else time.monotonic()
        return {"status": "down", "error": self.category, "down_for_s": round(time.monotonic() - since, 1)}


def statuses(gateway: Gateway) -> dict[str, tuple[str, StoreStatus | None]]:
    """{area: (backend, its status or None for memory)}, filled in when the stores open."""
    return gateway.services.setdefault("store_status", {})


def register(gateway: Gateway, area: str, backend: str, status: StoreStatus | None) -> None:
    statuses(gateway)[area] = (backend, status)
    gauge = gateway.metrics.gauge(
        "ferro_store_up",
        "1 while a state store answers (as its last call saw it), 0 while it is down",
        ["store"],
    )
    gauge.labels(area).set_function(lambda: 1.0 if status is None or status.up else 0.0)


def _health_section(gateway: Gateway) -> tuple[str, dict[str, Any], bool]:
    report: dict[str, Any] = {}
    healthy = True
    for area, (backend, status) in statuses(gateway).items():
        view = status.view() if status is not None else {"status": "up"}
        report[area] = {"backend": backend, **view}
        healthy = healthy and view["status"] == "up"
    return "store_status", report, healthy


if _health_section not in HEALTH_SECTIONS:
    HEALTH_SECTIONS.append(_health_section)
