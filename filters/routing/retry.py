"""When to try the same target again, and how long to wait first.

Transport errors and timeouts are always retryable; an upstream answer is retried when
its status is in `on_status_codes`; other 4xx (not 408/429) never are. The wait is
full-jitter exponential backoff, or the upstream's Retry-After when it sent one; a wait
that would pass the request's deadline ends the retries on this target.
"""

from __future__ import annotations

import random

from ferro_proxy.config import RetryConfig
from ferro_proxy.errors import GatewayError

NO_RETRY = RetryConfig(attempts=1)
TRANSPORT_CODES = frozenset({"upstream_unreachable", "gateway_timeout", "upstream_stream_error"})


def is_transport_failure(err: GatewayError) -> bool:
    return err.upstream_status is None and err.code in TRANSPORT_CODES


def should_retry(err: GatewayError, retry: RetryConfig) -> bool:
    """Whether `err` from one attempt may be retried on the same target."""
    if not err.retryable or err.code == "provider_saturated":
        return False
    if is_transport_failure(err):
        return True
    status = err.upstream_status if err.upstream_status is not None else err.status
    return status in retry.on_status_codes


def backoff_seconds(retry: RetryConfig, retry_number: int, rng: random.Random) -> float:
    """Full jitter: uniform in [0, min(max, initial * 2**n)] for the n-th retry (0-based)."""
    ceiling = min(retry.max_backoff_ms, retry.initial_backoff_ms * (2**retry_number))
    return rng.uniform(0, ceiling) / 1000.0


def wait_before_retry(
    err: GatewayError, retry: RetryConfig, retry_number: int, remaining: float, rng: random.Random
) -> float | None:
    """Seconds to wait before the next attempt, or None when waiting would pass the deadline."""
    wait = err.retry_after if err.retry_after is not None else backoff_seconds(retry, retry_number, rng)
    return wait if wait < remaining else None
