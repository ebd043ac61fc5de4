"""What every store backend provides. The memory, SQLite and Postgres backends implement
these same methods; the contract tests run each against all three."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

import orjson

from ferro_proxy.stores.records import AuditEntry, ConfigVersion, KeyRecord


def document_digest(document: dict[str, Any]) -> str:
    return hashlib.sha256(orjson.dumps(document, option=orjson.OPT_SORT_KEYS)).hexdigest()[:16]


class KeyStore:
    async def create(self, record: KeyRecord) -> KeyRecord:
        raise NotImplementedError

    async def get(self, key_id: str) -> KeyRecord | None:
        raise NotImplementedError

    async def get_by_hash(self, key_hash: str) -> KeyRecord | None:
        raise NotImplementedError

    async def list(self) -> list[KeyRecord]:
        raise NotImplementedError

    async def update(self, record: KeyRecord) -> None:
        """Write every mutable field of `record` (name, scopes, hash, dates, policy)."""
        raise NotImplementedError

    async def delete(self, key_id: str) -> bool:
        raise NotImplementedError

    async def add_usage(self, usage: dict[str, tuple[int, float]]) -> None:
        """Add request counts and move last-used forward: {key_id: (count, last_used)}."""
        raise NotImplementedError

    async def has_active_scope(self, scope: str, now: float) -> bool:
        return any(r.status(now) == "active" and scope in r.scopes for r in await self.list())


class ConfigStore:
    async def add(
        self, document: dict[str, Any], actor: str, source: str, rolled_back_from: int | None = None
    ) -> ConfigVersion:
        raise NotImplementedError

    async def latest(self) -> ConfigVersion | None:
        raise NotImplementedError

    async def get(self, version: int) -> ConfigVersion | None:
        raise NotImplementedError

    async def history(self, limit: int = 50, offset: int = 0) -> tuple[list[ConfigVersion], int]:
        """Newest first, and the total count."""
        raise NotImplementedError


class AuditStore:
    async def add(self, actor: str, action: str, target: str, detail: dict[str, Any]) -> None:
        raise NotImplementedError

    async def list(
        self, limit: int = 50, offset: int = 0, action: str | None = None
    ) -> tuple[list[AuditEntry], int]:
        raise NotImplementedError


@dataclass(slots=True)
class LogQuery:
    model: str | None = None
    provider: str | None = None
    key_id: str | None = None
    status: str | None = None  # 200 | 4xx | 5xx | error | ok
    since: float | None = None
    until: float | None = None
    limit: int = 50
    offset: int = 0

    def status_range(self) -> tuple[int, int] | None:
        """The [low, high] status interval this filter means, or None for no filter."""
        s = (self.status or "").strip().lower()
        if not s:
            return None
        if s == "error":
            return 400, 999
        if s in ("ok", "success"):
            return 0, 399
        if len(s) == 3 and s[0] in "0123456789" and s[1:] == "xx":
            return int(s[0]) * 100, int(s[0]) * 100 + 99
        if s.isascii() and s.isdigit() and len(s) <= 3:
            return int(s), int(s)
        raise ValueError(f"invalid status filter {self.status!r}: use a code, 4xx, 5xx, error or ok")


class LogStore:
    async def insert_many(self, rows: list[dict[str, Any]]) -> None:
        raise NotImplementedError

    async def query(self, q: LogQuery) -> tuple[list[dict[str, Any]], int]:
        """Matching rows newest first (limit/offset applied) and the total that matched."""
        raise NotImplementedError

    async def delete(self, q: LogQuery) -> int:
        raise NotImplementedError

    async def stats_rows(self, q: LogQuery, cap: int) -> tuple[list[dict[str, Any]], int]:
        """Up to `cap` newest matching rows (stats columns only) and the exact total."""
        raise NotImplementedError
