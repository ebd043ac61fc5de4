"""Checking a presented key: stored gateway keys and the optional bootstrap keys.

Validations are cached for `API_KEY_CACHE_SECONDS` (default 2 s, at most 10) so the hot
path rarely touches the store, while a key revoked on one sidecar fails on every sidecar
sharing the store within that window. Hashes are compared with `hmac.compare_digest`.
While the store is down, `key_grace.StaleGrace` decides (keys validated within
`auth.stale_grace` keep working, others get 503 `auth_unavailable`); whether any proxy key
exists is then the store's last answer (first asked when the gateway starts).
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ferro_proxy.admin.key_grace import LOOKUP_TIMEOUT, StaleGrace, auth_unavailable
from ferro_proxy.errors import GatewayError
from ferro_proxy.stores.records import KeyRecord, hash_token

if TYPE_CHECKING:
    from ferro_proxy.gateway import Gateway

log = logging.getLogger("ferro_proxy.auth")

_TRUE = ("1", "true", "yes", "on")
_MAX_CACHE = 10_000


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling: a stored key, or a bootstrap key (no record)."""

    name: str
    scopes: frozenset[str]
    key_id: str | None = None
    record: KeyRecord | None = None

    @property
    def actor(self) -> str:
        return f"key:{self.name} ({self.key_id})" if self.key_id else self.name

    def has_any(self, *scopes: str) -> bool:
        return any(s in self.scopes for s in scopes)


def invalid_key(message: str = "invalid gateway key") -> GatewayError:
    return GatewayError(401, message, code="invalid_api_key", type="authentication_error")


class KeyValidator:
    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway
        env = gateway.env
        self.ttl = min(10.0, max(0.0, float(env.get("API_KEY_CACHE_SECONDS") or 2.0)))
        self._cache: dict[str, tuple[float, KeyRecord | None]] = {}
        self._proxy_keys: tuple[float, bool] = (0.0, False)
        self._proxy_keys_known: bool | None = None  # the store's last answer, kept through outages
        self.outage = StaleGrace(gateway)
        self._bootstrap: list[tuple[str, frozenset[str], str]] = []
        if (env.get("ADMIN_BOOTSTRAP_ENABLED") or "").strip().lower() in _TRUE:
            for var, scope, name in (
                ("ADMIN_BOOTSTRAP_KEY", "admin", "bootstrap-admin"),
                ("ADMIN_BOOTSTRAP_READ_ONLY_KEY", "read_only", "bootstrap-read-only"),
            ):
                value = env.get(var) or ""
                if value:
                    self._bootstrap.append((hash_token(value), frozenset([scope]), name))
            if self._bootstrap:
                log.warning("admin bootstrap keys are enabled: create real keys and turn them off")
        self._last_bootstrap_warning = 0.0

    @property
    def store(self):  # the key store, or None when the gateway runs without stores
        return self.gateway.services.get("keys")

    def forget(self) -> None:
        """Drop cached validations (after a local change to the keys)."""
        self._cache.clear()
        self._proxy_keys = (0.0, False)
        self.outage.forget()

    def _bootstrap_match(self, digest: str) -> Principal | None:
        found = None
        for expected, scopes, name in self._bootstrap:
            if hmac.compare_digest(expected, digest):  # check every one: no early exit
                found = Principal(name=name, scopes=scopes)
        if found is not None:
            now = time.monotonic()
            if now - self._last_bootstrap_warning > 60:
                self._last_bootstrap_warning = now
                log.warning("a bootstrap admin key is in use: create a real admin key and disable it")
        return found

    async def _record_for(self, digest: str) -> KeyRecord | None:
        now = time.monotonic()
        cached = self._cache.get(digest)
        if cached is not None and cached[0] > now:
            return cached[1]
        store = self.store
        if store is None:
            return None
        if not self.outage.should_probe():
            return self.outage.fallback(digest)
        try:
            record = await asyncio.wait_for(store.get_by_hash(digest), LOOKUP_TIMEOUT)
        except Exception as exc:
            self.outage.failed(exc)
            return self.outage.fallback(digest)
        self.outage.answered(digest, record)
        if record is not None and "proxy" in record.scopes and record.status() == "active":
            self._proxy_keys_known = True  # one such key is enough to know /v1 needs keys
        if self.ttl > 0:
            if len(self._cache) >= _MAX_CACHE:
                self._cache.clear()
            self._cache[digest] = (now + self.ttl, record)
        return record

    async def check(self, token: str, *, allow_bootstrap: bool = True) -> Principal:
        """The caller behind `token`, or a 401 GatewayError."""
        digest = hash_token(token)
        if allow_bootstrap and self._bootstrap:
            principal = self._bootstrap_match(digest)
            if principal is not None:
                return principal
        record = await self._record_for(digest)
        if record is None or not hmac.compare_digest(record.key_hash, digest):
            raise invalid_key()
        status = record.status()
        if status != "active":
            raise invalid_key(f"gateway key {record.prefix}… is {status}")
        usage = self.gateway.services.get("stores")
        if usage is not None and usage.key_usage is not None:
            usage.key_usage.record(record.id)
        return Principal(name=record.name, scopes=frozenset(record.scopes), key_id=record.id, record=record)

    async def proxy_keys_exist(self) -> bool:
        """Whether any active key may call /v1 (then /v1 needs a key); cached like validations."""
        now = time.monotonic()
        expires, value = self._proxy_keys
        if expires > now:
            return value
        store = self.store
        if store is None:
            return False
        if self.outage.should_probe():
            try:
                value = bool(
                    await asyncio.wait_for(store.has_active_scope("proxy", time.time()), LOOKUP_TIMEOUT)
                )
            except Exception as exc:
                self.outage.failed(exc)
            else:
                self.outage.store_ok()
                self._proxy_keys = (now + self.ttl, value)
                self._proxy_keys_known = value
                return value
        if self._proxy_keys_known is None:
            raise auth_unavailable()
        return self._proxy_keys_known


def validator_for(gateway: Gateway) -> KeyValidator:
    validator = gateway.services.get("key_validator")
    if validator is None:
        validator = KeyValidator(gateway)
        gateway.services["key_validator"] = validator
    return validator
