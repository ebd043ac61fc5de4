"""Rolling latency per target for the least-latency strategy: the median of the last
`window` samples (seconds to the whole answer, or to the first token for streams)."""

from __future__ import annotations

from collections import deque


class LatencyStats:
    __slots__ = ("_samples", "_p50", "_stale", "count")

    def __init__(self, window: int) -> None:
        self._samples: deque[float] = deque(maxlen=window)
        self._p50: float | None = None
        self._stale = False
        self.count = 0

    def resize(self, window: int) -> None:
        if self._samples.maxlen != window:
            self._samples = deque(self._samples, maxlen=window)
            self._stale = True

    def record(self, seconds: float) -> None:
        self._samples.append(seconds)
        self.count += 1
        self._stale = True  # sorted when someone reads p50, not on every request

    @property
    def p50(self) -> float | None:
        """The median of the window, or None for a target never measured."""
        if self._stale:
            self._stale = False
            self._recompute()
        return self._p50

    def _recompute(self) -> None:
        if not self._samples:
            self._p50 = None
            return
        ordered = sorted(self._samples)
        mid = len(ordered) // 2
        self._p50 = ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2
