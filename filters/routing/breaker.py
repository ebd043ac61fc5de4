"""A per-target circuit breaker.

closed --(failure_threshold consecutive failures)--> open --(timeout)--> half-open
half-open admits at most `half_open_max` probes at a time; `success_threshold` probe
successes close the circuit, one probe failure opens it again.

Callers take a `Permit` before an attempt and settle it with exactly one of `success()`,
`failure()` or `neutral()` (429s, client errors and client disconnects say nothing about
the target's health, so they are neutral).
"""

from __future__ import annotations

import time
from collections.abc import Callable

from ferro_proxy.config import CircuitBreakerConfig

CLOSED, OPEN, HALF_OPEN = "closed", "open", "half_open"
STATE_VALUE = {CLOSED: 0, OPEN: 1, HALF_OPEN: 2}  # the ferro_circuit_state gauge


class Permit:
    """One admitted attempt; settle it once. A target without a breaker gets permits with
    `breaker=None` that record nothing."""

    __slots__ = ("breaker", "probe", "settled")

    def __init__(self, breaker: CircuitBreaker | None, probe: bool) -> None:
        self.breaker = breaker
        self.probe = probe
        self.settled = False

    def success(self) -> None:
        if not self.settled:
            self.settled = True
            if self.breaker is not None:
                self.breaker._on_success(self.probe)

    def failure(self) -> None:
        if not self.settled:
            self.settled = True
            if self.breaker is not None:
                self.breaker._on_failure(self.probe)

    def neutral(self) -> None:
        if not self.settled:
            self.settled = True
            if self.breaker is not None and self.probe:
                self.breaker._release_probe()


class CircuitBreaker:
    def __init__(
        self,
        config: CircuitBreakerConfig,
        on_change: Callable[[CircuitBreaker, str], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config
        self._on_change = on_change
        self._clock = clock
        self._state = CLOSED
        self.consecutive_failures = 0
        self._probe_successes = 0
        self._probes_in_flight = 0
        self._opened_at = 0.0
        self.times_opened = 0

    def reconfigure(self, config: CircuitBreakerConfig) -> None:
        self.config = config

    @property
    def state(self) -> str:
        """The current state; an open circuit whose timeout passed reads as half-open."""
        if self._state == OPEN and self._clock() - self._opened_at >= self.config.timeout:
            self._set(HALF_OPEN)
            self._probe_successes = 0
            self._probes_in_flight = 0
        return self._state

    def retry_in(self) -> float:
        """Seconds until an open circuit lets a probe through (0 when it is not open)."""
        if self.state != OPEN:
            return 0.0
        return max(0.0, self._opened_at + self.config.timeout - self._clock())

    def try_acquire(self) -> Permit | None:
        """A permit for one attempt, or None when the circuit turns the attempt away."""
        state = self.state
        if state == CLOSED:
            return Permit(self, probe=False)
        if state == HALF_OPEN and self._probes_in_flight < self.config.half_open_max:
            self._probes_in_flight += 1
            return Permit(self, probe=True)
        return None

    # ------------------------------------------------------------ outcomes

    def _release_probe(self) -> None:
        self._probes_in_flight = max(0, self._probes_in_flight - 1)

    def _on_success(self, probe: bool) -> None:
        if probe:
            self._release_probe()
            if self._state == HALF_OPEN:
                self._probe_successes += 1
                if self._probe_successes >= self.config.success_threshold:
                    self.consecutive_failures = 0
                    self._set(CLOSED)
            return
        if self._state == CLOSED:
            self.consecutive_failures = 0

    def _on_failure(self, probe: bool) -> None:
        if probe:
            self._release_probe()
            if self._state == HALF_OPEN:
                self._open()
            return
        if self._state == CLOSED:
            self.consecutive_failures += 1
            if self.consecutive_failures >= self.config.failure_threshold:
                self._open()

    def _open(self) -> None:
        self._opened_at = self._clock()
        self.times_opened += 1
        self._probe_successes = 0
        self._set(OPEN)

    def _set(self, state: str) -> None:
        if state != self._state:
            self._state = state
            if self._on_change is not None:
                self._on_change(self, state)
