"""Outbound fetches of URLs the gateway did not choose: image URLs a client sent, output or
stream URLs an upstream's answer names.

`SafeFetcher` refuses anything but public destinations: https only (http with
`fetch.allow_http`), every address the host resolves to must be public, the connection goes to
the very addresses that were checked (its resolver is the check, so a second DNS answer cannot
swap in a private one), redirects are failures, the body is capped in size and the whole fetch
in time. Why a fetch failed is logged, never told to the client: the reason would map the
pod's network for whoever sent the URL.

Which addresses count as public is `ferro_proxy.netpolicy.is_public_address`, shared with
the interception tunnel. `same_origin(url, base_url)` tells a provider whether a URL named
in an upstream answer is on its configured host, the only place its credentials may go.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
from collections.abc import Callable

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult
from yarl import URL

from ferro_proxy.config import FetchConfig
from ferro_proxy.errors import GatewayError
from ferro_proxy.jsonlog import log_fields, scrub
from ferro_proxy.netpolicy import IPAddress, is_public_address
from ferro_proxy.url_redact import url_origin

log = logging.getLogger("ferro_proxy.safe_fetch")


class FetchRefused(OSError):
    """A destination the policy refuses; an OSError so aiohttp's connector passes it through."""


def _literal(host: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(host.strip("[]").split("%", 1)[0])
    except ValueError:
        return None


def check_address(address: str, policy: FetchConfig) -> None:
    ip = _literal(address)
    if ip is None:
        raise FetchRefused(f"unparseable address {address!r}")
    if not policy.allow_private and not is_public_address(ip):
        raise FetchRefused(f"non-public address {ip}")


class CheckingResolver(AbstractResolver):
    """Resolves with the loop's getaddrinfo and refuses the host if ANY answer is not public;
    the connector then connects to exactly the addresses returned here."""

    def __init__(self, policy: Callable[[], FetchConfig]) -> None:
        self._policy = policy

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_UNSPEC
    ) -> list[ResolveResult]:
        infos = await asyncio.get_running_loop().getaddrinfo(
            host, port, type=socket.SOCK_STREAM, family=family
        )
        policy = self._policy()
        results: list[ResolveResult] = []
        for fam, _, proto, _, sockaddr in infos:
            address = str(sockaddr[0])
            check_address(address, policy)
            results.append(
                {
                    "hostname": host,
                    "host": address,
                    "port": int(sockaddr[1]),
                    "family": fam,
                    "proto": proto,
                    "flags": socket.AI_NUMERICHOST,
                }
            )
        if not results:
            raise FetchRefused("no addresses")
        return results

    async def close(self) -> None:
        return None


def same_origin(url: str, base_url: str) -> bool:
    """Scheme, host and port of `url` equal those of `base_url` (default ports filled in)."""
    try:
        a, b = URL(url), URL(base_url)
    except (ValueError, TypeError):
        return False
    if not a.is_absolute() or not b.is_absolute() or not a.raw_host:
        return False
    return (a.scheme.lower(), a.raw_host.lower(), a.port) == (
        b.scheme.lower(),
        (b.raw_host or "").lower(),
        b.port,
    )


def image_fetch_failed() -> GatewayError:
    """The one answer a client gets for any image URL the gateway would not or could not fetch."""
    return GatewayError(
        400, "image could not be fetched", code="image_fetch_failed", param="messages", retryable=False
    )


class FetchError(Exception):
    """A fetch that failed; `reason` is for the log only."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class SafeFetcher:
    """One guarded client session (its own connector and resolver) for URLs the gateway did not
    choose. `policy` is read on every request, so a reload applies to the next fetch."""

    def __init__(self, policy: Callable[[], FetchConfig]) -> None:
        self._policy = policy
        self._session: aiohttp.ClientSession | None = None

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            connector = aiohttp.TCPConnector(
                resolver=CheckingResolver(self._policy),
                use_dns_cache=False,
                force_close=True,  # no pooled connection outlives the check it passed
                limit=64,
            )
            self._session = aiohttp.ClientSession(connector=connector, trust_env=False)
        return self._session

    async def close(self) -> None:
        if self._session is not None and not self._session.closed:
            await self._session.close()

    def _check_url(self, url: str, policy: FetchConfig) -> URL:
        try:
            u = URL(url)
        except (ValueError, TypeError):
            raise FetchError("not a URL") from None
        schemes = ("https", "http") if policy.allow_http else ("https",)
        if u.scheme.lower() not in schemes:
            raise FetchError(f"scheme {u.scheme!r} not allowed")
        if not u.raw_host:
            raise FetchError("no host")
        # aiohttp connects to IP literals without asking the resolver: check them here.
        if _literal(u.raw_host) is not None:
            try:
                check_address(u.raw_host, policy)
            except FetchRefused as exc:
                raise FetchError(str(exc)) from None
        return u

    async def open(
        self,
        url: str,
        *,
        headers: dict[str, str] | None = None,
        timeout: aiohttp.ClientTimeout | None = None,
    ) -> aiohttp.ClientResponse:
        """GET `url` under the policy; a 2xx response for the caller to read and release.
        Raises FetchError (already logged) for a refused destination, a 3xx or a 4xx/5xx."""
        policy = self._policy()
        try:
            u = self._check_url(url, policy)
            try:
                resp = await self.session.get(u, headers=headers, timeout=timeout, allow_redirects=False)
            except aiohttp.ClientConnectorError as exc:
                raise FetchError(f"connect failed: {exc.os_error!r}") from None
            except (TimeoutError, aiohttp.ClientError, OSError) as exc:
                raise FetchError(f"{type(exc).__name__}: {exc}") from None
            if resp.status >= 300:
                resp.release()
                raise FetchError(f"answered {resp.status}")
            return resp
        except FetchError as exc:
            self._log(url, exc.reason)
            raise

    async def fetch(
        self, url: str, *, timeout: float | None = None, max_bytes: int | None = None
    ) -> tuple[bytes, str | None]:
        """(body, Content-Type) of `url`, at most `fetch.max_bytes` (or the caller's smaller
        `max_bytes`), within `fetch.timeout` (or the caller's shorter `timeout`)."""
        policy = self._policy()
        total = policy.timeout if timeout is None else min(policy.timeout, timeout)
        cap = policy.max_bytes if max_bytes is None else min(policy.max_bytes, max_bytes)
        resp = await self.open(url, timeout=aiohttp.ClientTimeout(total=max(0.001, total)))
        try:
            declared = resp.content_length
            if declared is not None and declared > cap:
                raise FetchError(f"Content-Length {declared} over the cap")
            chunks: list[bytes] = []
            size = 0
            async for chunk in resp.content.iter_chunked(64 * 1024):
                size += len(chunk)
                if size > cap:
                    raise FetchError(f"body over {cap} bytes")
                chunks.append(chunk)
            return b"".join(chunks), resp.headers.get("Content-Type")
        except FetchError as exc:
            self._log(url, exc.reason)
            raise
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            reason = f"read failed: {type(exc).__name__}"
            self._log(url, reason)
            raise FetchError(reason) from None
        finally:
            resp.close()

    @staticmethod
    def _log(url: str, reason: str) -> None:
        log_fields(
            log, logging.INFO, "outbound fetch refused or failed", where=scrub(url_origin(url)), reason=scrub(reason)
        )
