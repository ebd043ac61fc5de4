"""Short-lived cloud access tokens (Google, Entra ID), cached and refreshed before they expire.

A token is fetched on first use. Once it enters its early window (the last five minutes, or
the second half of a short lifetime) the next request starts a refresh in the background
and goes on with the token it has; only a token within `BLOCK_MARGIN` of its expiry (or
none at all) makes requests wait. One refresh runs at a time, whoever started it, and the
requests waiting share its result; a request that gives up waiting does not cancel it.

Every token is registered with the redaction registry before anyone sees it (as a rotating
secret: only the last two generations of each token stay registered).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import aiohttp
import orjson

from ferro_proxy import redaction
from ferro_proxy.errors import GatewayError
from ferro_proxy.url_redact import url_origin

log = logging.getLogger("ferro_proxy.providers.tokens")

BLOCK_MARGIN = 60.0  # a token this close to expiry is not used any more
EARLY_WINDOW = 300.0  # start refreshing in the background this long before expiry
RETRY_AFTER_FAILURE = 10.0  # a failed background refresh is retried after this long
DEFAULT_LIFETIME = 3600.0

# (token, lifetime in seconds): what a fetcher answers.
Fetch = Callable[[aiohttp.ClientSession], Awaitable[tuple[str, float]]]


def now() -> float:
    """The clock tokens are timed with (tests move it)."""
    return time.time()


def lifetime_from(value: Any, default: float = DEFAULT_LIFETIME) -> float:
    """An `expires_in` value: a number, or a string of one (some endpoints send that)."""
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        return default
    return seconds if seconds > 0 else default


class CachedToken:
    """One credential's current access token."""

    def __init__(self, fetch: Fetch, name: str) -> None:
        self._fetch = fetch
        self.name = name  # for logs: "vertex-ai metadata server"
        self._token: str | None = None
        self._refresh_at = 0.0  # background refresh from here on
        self._block_at = 0.0  # unusable from here on
        self._task: asyncio.Task[None] | None = None
        self._background_retry_at = 0.0
        self.fetches = 0  # completed fetches, for health views

    def current(self) -> str | None:
        """The token, if it is still usable now; never fetches."""
        if self._token is not None and now() < self._block_at:
            return self._token
        return None

    def prefetch(self, session: aiohttp.ClientSession) -> None:
        """Start the first fetch now (in the background), so the first request finds it ready."""
        if self._token is None and self._task is None:
            self._start(session, background=True)

    @property
    def latest(self) -> str | None:
        """The last token fetched, usable or not (for a caller that has just awaited `get`)."""
        return self._token

    async def get(self, session: aiohttp.ClientSession) -> str:
        """A usable token: the cached one (refreshed in the background when due), else a fresh one."""
        t = now()
        if self._token is not None and t < self._block_at:
            if t >= self._refresh_at and self._task is None and t >= self._background_retry_at:
                self._start(session, background=True)
            return self._token
        task = self._task or self._start(session, background=False)
        # shield: a cancelled request must not cancel the refresh others wait for
        await asyncio.shield(task)
        token = self.current()
        if token is None:  # fetched a token that is already inside the margin: use it once
            assert self._token is not None
            return self._token
        return token

    def _start(self, session: aiohttp.ClientSession, *, background: bool) -> asyncio.Task[None]:
        task = asyncio.get_running_loop().create_task(self._refresh(session))
        self._task = task
        task.add_done_callback(lambda t: self._done(t, background))
        return task

    def _done(self, task: asyncio.Task[None], background: bool) -> None:
        if self._task is task:
            self._task = None
        if task.cancelled():
            return
        exc = task.exception()  # retrieved here so an unawaited failure is never "never retrieved"
        if exc is not None and background:
            self._background_retry_at = now() + RETRY_AFTER_FAILURE
            log.warning("%s: background token refresh failed: %s", self.name, exc)

    async def _refresh(self, session: aiohttp.ClientSession) -> None:
        token, lifetime = await self._fetch(session)
        redaction.register_rotating("token:" + self.name, token)
        issued = now()
        self._token = token
        self._block_at = issued + lifetime - BLOCK_MARGIN
        self._refresh_at = issued + max(lifetime - EARLY_WINDOW, lifetime / 2)
        self._background_retry_at = 0.0
        self.fetches += 1

    async def close(self) -> None:
        task, self._task = self._task, None
        if task is not None and not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task


# ------------------------------------------------------------------ token endpoints

TOKEN_TIMEOUT = aiohttp.ClientTimeout(total=30, connect=10)


def auth_error(provider: str, source: str, message: str) -> GatewayError:
    """The gateway could not get its own credentials: not the client's fault, a 502."""
    return GatewayError(
        502,
        f"{provider}: {source} authentication failed: {message}",
        code="upstream_auth_error",
        type="api_error",
        provider=provider,
    )


async def call_json(
    session: aiohttp.ClientSession,
    method: str,
    url: str,
    *,
    provider: str,
    source: str,
    timeout: aiohttp.ClientTimeout = TOKEN_TIMEOUT,
    **kw: Any,
) -> tuple[int, Any, bytes, Mapping[str, str]]:
    """One call to a token or metadata endpoint: (status, parsed JSON or None, raw, headers)."""
    try:
        async with session.request(method, url, timeout=timeout, allow_redirects=False, **kw) as resp:
            raw = await resp.read()
            status, headers = resp.status, resp.headers
    except (TimeoutError, aiohttp.ClientError, OSError) as exc:
        raise auth_error(
            provider, source, f"{url_origin(url)} could not be reached ({type(exc).__name__})"
        ) from None
    try:
        data = orjson.loads(raw) if raw else None
    except orjson.JSONDecodeError:
        data = None
    return status, data, raw, headers


def error_reason(data: Any, status: int) -> str:
    """What an OAuth2 / Google / Entra error body says, briefly."""
    if isinstance(data, dict):
        err = data.get("error")
        if isinstance(err, dict):  # Google APIs: {"error": {"code", "message", "status"}}
            return str(err.get("message") or err.get("status") or status)[:300]
        text = data.get("error_description") or err or data.get("message")
        if text:
            return str(text).splitlines()[0][:300]  # Entra appends trace and correlation ids
    return f"answered {status}"
