"""In-process stores (the default): fast, lost on restart, not shared between sidecars."""

from __future__ import annotations

import copy
import dataclasses
import logging
import time
from collections import deque
from typing import Any

from ferro_proxy.stores.base import AuditStore, ConfigStore, KeyStore, LogQuery, LogStore, document_digest
from ferro_proxy.stores.records import (
    AuditEntry,
    ConfigVersion,
    KeyRecord,
    UndecodableRecord,
    check_key,
    row_ref,
)

log = logging.getLogger("ferro_proxy.stores")


def _usable(record: KeyRecord) -> KeyRecord | None:
    """A copy of `record`, or None (with a warning) if one of its fields cannot be used."""
    try:
        return check_key(dataclasses.replace(record))
    except UndecodableRecord as exc:
        log.warning("skipping a stored key that cannot be decoded (id %s): %s", row_ref(record.id), exc)
        return None


class MemoryKeyStore(KeyStore):
    def __init__(self) -> None:
        self._by_id: dict[str, KeyRecord] = {}

    async def create(self, record: KeyRecord) -> KeyRecord:
        self._by_id[record.id] = dataclasses.replace(record)
        return record

    async def get(self, key_id: str) -> KeyRecord | None:
        found = self._by_id.get(key_id)
        return _usable(found) if found else None

    async def get_by_hash(self, key_hash: str) -> KeyRecord | None:
        for record in self._by_id.values():
            if record.key_hash == key_hash:
                return _usable(record)
        return None

    async def list(self) -> list[KeyRecord]:
        usable = [c for c in (_usable(r) for r in self._by_id.values()) if c is not None]
        return sorted(usable, key=lambda r: r.created_at)

    async def update(self, record: KeyRecord) -> None:
        if record.id in self._by_id:
            current = self._by_id[record.id]
            self._by_id[record.id] = dataclasses.replace(
                record, usage_count=current.usage_count, last_used_at=current.last_used_at
            )

    async def delete(self, key_id: str) -> bool:
        return self._by_id.pop(key_id, None) is not None

    async def add_usage(self, usage: dict[str, tuple[int, float]]) -> None:
        for key_id, (count, last_used) in usage.items():
            record = self._by_id.get(key_id)
            if record is not None:
                record.usage_count += count
                record.last_used_at = max(record.last_used_at or 0.0, last_used)


class MemoryConfigStore(ConfigStore):
    def __init__(self) -> None:
        self._versions: list[ConfigVersion] = []

    async def add(
        self, document: dict[str, Any], actor: str, source: str, rolled_back_from: int | None = None
    ) -> ConfigVersion:
        version = ConfigVersion(
            version=len(self._versions) + 1,
            document=copy.deepcopy(document),
            actor=actor,
            source=source,
            created_at=time.time(),
            digest=document_digest(document),
            rolled_back_from=rolled_back_from,
        )
        self._versions.append(version)
        return version

    async def latest(self) -> ConfigVersion | None:
        return self._versions[-1] if self._versions else None

    async def get(self, version: int) -> ConfigVersion | None:
        if 1 <= version <= len(self._versions):
            return self._versions[version - 1]
        return None

    async def history(self, limit: int = 50, offset: int = 0) -> tuple[list[ConfigVersion], int]:
        newest_first = list(reversed(self._versions))
        return newest_first[offset : offset + limit], len(newest_first)


class MemoryAuditStore(AuditStore):
    def __init__(self, max_entries: int = 10_000) -> None:
        self._entries: deque[AuditEntry] = deque(maxlen=max_entries)
        self._next_id = 1

    async def add(self, actor: str, action: str, target: str, detail: dict[str, Any]) -> None:
        self._entries.append(AuditEntry(self._next_id, time.time(), actor, action, target, dict(detail)))
        self._next_id += 1

    async def list(
        self, limit: int = 50, offset: int = 0, action: str | None = None
    ) -> tuple[list[AuditEntry], int]:
        matching = [e for e in reversed(self._entries) if not action or e.action.startswith(action)]
        return matching[offset : offset + limit], len(matching)


def matches(row: dict[str, Any], q: LogQuery, status_range: tuple[int, int] | None) -> bool:
    if q.model and row.get("model") != q.model:
        return False
    if q.provider and row.get("provider") != q.provider:
        return False
    if q.key_id and row.get("key_id") != q.key_id:
        return False
    if status_range and not status_range[0] <= int(row.get("status") or 0) <= status_range[1]:
        return False
    if q.since is not None and row["ts"] < q.since:
        return False
    if q.until is not None and row["ts"] > q.until:
        return False
    return True


class MemoryLogStore(LogStore):
    """The newest `max_rows` request logs, in a ring buffer."""

    def __init__(self, max_rows: int = 10_000) -> None:
        self._rows: deque[dict[str, Any]] = deque(maxlen=max_rows)

    async def insert_many(self, rows: list[dict[str, Any]]) -> None:
        self._rows.extend(dict(r) for r in rows)

    def _matching(self, q: LogQuery) -> list[dict[str, Any]]:
        status_range = q.status_range()
        found = [r for r in self._rows if matches(r, q, status_range)]
        found.sort(key=lambda r: r["ts"], reverse=True)
        return found

    async def query(self, q: LogQuery) -> tuple[list[dict[str, Any]], int]:
        found = self._matching(q)
        return [dict(r) for r in found[q.offset : q.offset + q.limit]], len(found)

    async def delete(self, q: LogQuery) -> int:
        status_range = q.status_range()
        keep = [r for r in self._rows if not matches(r, q, status_range)]
        removed = len(self._rows) - len(keep)
        self._rows.clear()
        self._rows.extend(keep)
        return removed

    async def stats_rows(self, q: LogQuery, cap: int) -> tuple[list[dict[str, Any]], int]:
        found = self._matching(q)
        return found[:cap], len(found)
