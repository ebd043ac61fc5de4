"""Opening the stores the environment asks for, once per process.

`CONFIG_STORE_BACKEND/_DSN` (config versions and the audit log), `API_KEY_STORE_BACKEND/_DSN`
(gateway keys) and `REQUEST_LOG_STORE_BACKEND/_DSN` (request logs): `memory` (default),
`sqlite` (DSN = a file path) or `postgres` (DSN = a postgresql:// URL). Stores with the
same backend and DSN share one connection or pool. The hub lives in
`gateway.services["stores"]`, the stores in `services["keys"|"configs"|"audit"|"logs"]`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping
from typing import Any

from ferro_proxy.config import ConfigError
from ferro_proxy.stores.base import AuditStore, ConfigStore, KeyStore, LogStore
from ferro_proxy.stores.database import Database, open_database, redact_dsn
from ferro_proxy.stores.memory import MemoryAuditStore, MemoryConfigStore, MemoryKeyStore, MemoryLogStore
from ferro_proxy.stores.sql import SqlAuditStore, SqlConfigStore, SqlKeyStore, SqlLogStore
from ferro_proxy.stores.status import StoreStatus, StoreUnavailable, register

log = logging.getLogger("ferro_proxy.stores")

BACKENDS = ("memory", "sqlite", "postgres")
AREAS = {"config": "CONFIG_STORE", "keys": "API_KEY_STORE", "logs": "REQUEST_LOG_STORE"}


def backend_choice(env: Mapping[str, str], prefix: str) -> tuple[str, str]:
    backend = (env.get(f"{prefix}_BACKEND") or "memory").strip().lower()
    if backend == "postgresql":
        backend = "postgres"
    dsn = (env.get(f"{prefix}_DSN") or "").strip()
    if backend not in BACKENDS:
        raise ConfigError([f"{prefix}_BACKEND: expected one of {', '.join(BACKENDS)}, got {backend!r}"])
    if backend != "memory" and not dsn:
        raise ConfigError([f"{prefix}_DSN: required when {prefix}_BACKEND={backend}"])
    return backend, dsn


class KeyUsageBuffer:
    """Counts key use in memory and writes it in the background: no DB on the hot path."""

    def __init__(self, store: KeyStore, interval: float = 2.0) -> None:
        self.store = store
        self.interval = interval
        self._pending: dict[str, tuple[int, float]] = {}
        self._task: asyncio.Task[None] | None = None

    def record(self, key_id: str) -> None:
        count, _ = self._pending.get(key_id, (0, 0.0))
        self._pending[key_id] = (count + 1, time.time())
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._flush_later())

    async def _flush_later(self) -> None:
        await asyncio.sleep(self.interval)
        await self.flush()

    async def flush(self) -> None:
        pending, self._pending = self._pending, {}
        if not pending:
            return
        try:
            await self.store.add_usage(pending)
        except StoreUnavailable:  # the store's own status logs the outage: keep the counts
            for key_id, (count, last) in pending.items():
                now_count, now_last = self._pending.get(key_id, (0, 0.0))
                self._pending[key_id] = (count + now_count, max(last, now_last))
        except Exception as exc:
            log.warning("could not record key usage: %s", type(exc).__name__)

    async def close(self) -> None:
        if self._task is not None and not self._task.done():
            self._task.cancel()
        await self.flush()


class StoreHub:
    def __init__(self, env: Mapping[str, str]) -> None:
        self.env = env
        self._databases: dict[tuple[str, str], Database] = {}
        self.choices: dict[str, tuple[str, str]] = {}
        self.keys: KeyStore | None = None
        self.configs: ConfigStore | None = None
        self.audit: AuditStore | None = None
        self.logs: LogStore | None = None
        self.key_usage: KeyUsageBuffer | None = None
        self._log_stores: dict[tuple[str, str], LogStore] = {}

    async def database(self, backend: str, dsn: str) -> Database:
        db = self._databases.get((backend, dsn))
        if db is None:
            try:
                db = await open_database(backend, dsn)
            except Exception as exc:
                raise ConfigError(
                    [f"cannot open the {backend} store {redact_dsn(dsn)}: {type(exc).__name__}: {exc}"]
                ) from None
            self._databases[(backend, dsn)] = db
        return db

    async def open(self) -> StoreHub:
        for area, prefix in AREAS.items():
            self.choices[area] = backend_choice(self.env, prefix)
        backend, dsn = self.choices["keys"]
        if backend == "memory":
            self.keys = MemoryKeyStore()
        else:
            self.keys = await SqlKeyStore(await self.database(backend, dsn)).migrate()
        backend, dsn = self.choices["config"]
        if backend == "memory":
            self.configs, self.audit = MemoryConfigStore(), MemoryAuditStore()
        else:
            db = await self.database(backend, dsn)
            self.configs = await SqlConfigStore(db).migrate()
            self.audit = SqlAuditStore(db)
        self.logs = await self.log_store(*self.choices["logs"])
        self.key_usage = KeyUsageBuffer(self.keys)
        self.name_statuses()
        for area, (backend, dsn) in self.choices.items():
            where = f" at {redact_dsn(dsn)}" if dsn else ""
            log.info("%s store: %s%s", area, backend, where)
        return self

    async def log_store(self, backend: str, dsn: str) -> LogStore:
        """The request-log store for a backend/DSN (the env's, or a request-logger's own)."""
        existing = self._log_stores.get((backend, dsn))
        if existing is not None:
            return existing
        store: LogStore
        if backend == "memory":
            store = MemoryLogStore()
        else:
            store = await SqlLogStore(await self.database(backend, dsn)).migrate()
        self._log_stores[(backend, dsn)] = store
        return store

    def health(self) -> dict[str, Any]:
        return {area: backend for area, (backend, _) in self.choices.items()}

    def status_of(self, area: str) -> StoreStatus | None:
        """The up/down status of the database behind `area`, None for a memory store."""
        db = self._databases.get(self.choices.get(area, ("memory", "")))
        return db.status if db is not None else None

    def name_statuses(self) -> None:
        """Name each database's status by the areas it serves, for its log lines."""
        served: dict[int, list[str]] = {}
        for area, choice in self.choices.items():
            db = self._databases.get(choice)
            if db is not None:
                served.setdefault(id(db), []).append(area)
        for db in self._databases.values():
            areas = served.get(id(db))
            if areas:
                db.status.name = f"{db.dialect} store ({', '.join(areas)})"

    async def close(self) -> None:
        if self.key_usage is not None:
            await self.key_usage.close()
        for db in list(self._databases.values()):
            try:
                await db.close()
            except Exception:
                log.exception("closing a store")
        self._databases.clear()


async def open_stores(gateway: Any) -> StoreHub:
    """Open the stores once and publish them in `gateway.services`."""
    hub = gateway.services.get("stores")
    if hub is None:
        hub = await StoreHub(gateway.env).open()
        gateway.services["stores"] = hub
        gateway.services.update(keys=hub.keys, configs=hub.configs, audit=hub.audit, logs=hub.logs)
        for area, (backend, _) in hub.choices.items():
            register(gateway, area, backend, hub.status_of(area))
    return hub
