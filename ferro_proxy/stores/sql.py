"""The SQL stores (SQLite and Postgres share them through `Database`), with their migrations."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any, TypeVar

import orjson

from ferro_proxy.stores.base import AuditStore, ConfigStore, KeyStore, LogQuery, LogStore, document_digest
from ferro_proxy.stores.database import Database
from ferro_proxy.stores.records import (
    LOG_COLUMNS,
    AuditEntry,
    ConfigVersion,
    KeyRecord,
    UndecodableRecord,
    audit_from_fields,
    check_log_row,
    key_from_fields,
    row_ref,
    version_from_fields,
)

log = logging.getLogger("ferro_proxy.stores")
T = TypeVar("T")

# Each entry is one schema version: append new versions, never edit shipped ones.
KEY_MIGRATIONS: list[list[str]] = [
    [
        "CREATE TABLE IF NOT EXISTS ferro_keys ("
        " id TEXT PRIMARY KEY, name TEXT NOT NULL, key_hash TEXT NOT NULL UNIQUE, prefix TEXT NOT NULL,"
        " scopes TEXT NOT NULL, created_at {real} NOT NULL, expires_at {real}, revoked_at {real},"
        " rotated_at {real}, last_used_at {real}, usage_count {bigint} NOT NULL DEFAULT 0,"
        " allowed_models TEXT NOT NULL DEFAULT '[]', rpm_limit {bigint}, tpm_limit {bigint},"
        " budget_usd {real})",
    ]
]
CONFIG_MIGRATIONS: list[list[str]] = [
    [
        "CREATE TABLE IF NOT EXISTS ferro_config_versions ("
        " version {serial}, document TEXT NOT NULL, actor TEXT NOT NULL, source TEXT NOT NULL,"
        " created_at {real} NOT NULL, digest TEXT NOT NULL, rolled_back_from INTEGER)",
        "CREATE TABLE IF NOT EXISTS ferro_audit ("
        " id {serial}, ts {real} NOT NULL, actor TEXT NOT NULL, action TEXT NOT NULL,"
        " target TEXT NOT NULL, detail TEXT NOT NULL)",
        "CREATE INDEX IF NOT EXISTS ferro_audit_ts ON ferro_audit (ts)",
    ]
]
LOG_MIGRATIONS: list[list[str]] = [
    [
        "CREATE TABLE IF NOT EXISTS ferro_request_logs ("
        " id TEXT NOT NULL, ts {real} NOT NULL, finished_at {real}, key_id TEXT, endpoint TEXT,"
        " provider TEXT, model TEXT, status INTEGER NOT NULL, stream INTEGER NOT NULL DEFAULT 0,"
        " prompt_tokens {bigint} NOT NULL DEFAULT 0, completion_tokens {bigint} NOT NULL DEFAULT 0,"
        " total_tokens {bigint} NOT NULL DEFAULT 0, cost_usd {real}, latency_ms {real}, ttft_ms {real},"
        " error TEXT, cache_hit INTEGER NOT NULL DEFAULT 0, guardrail_hits TEXT,"
        " request_body TEXT, response_body TEXT)",
        "CREATE INDEX IF NOT EXISTS ferro_request_logs_ts ON ferro_request_logs (ts)",
        "CREATE INDEX IF NOT EXISTS ferro_request_logs_key ON ferro_request_logs (key_id, ts)",
    ]
]

_KEY_FIELDS = (
    "id, name, key_hash, prefix, scopes, created_at, expires_at, revoked_at, rotated_at,"
    " last_used_at, usage_count, allowed_models, rpm_limit, tpm_limit, budget_usd"
)


def _decoded(kind: str, rows: list[dict[str, Any]], decode: Callable[[dict[str, Any]], T]) -> list[T]:
    """The rows that decode; each one that does not is skipped with a warning naming its id and field."""
    out = []
    for row in rows:
        try:
            out.append(decode(row))
        except UndecodableRecord as exc:
            log.warning(
                "skipping a stored %s that cannot be decoded (id %s): %s", kind, row_ref(row.get("id")), exc
            )
    return out


def _one(kind: str, row: dict[str, Any] | None, decode: Callable[[dict[str, Any]], T]) -> T | None:
    found = _decoded(kind, [row], decode) if row else []
    return found[0] if found else None


class SqlKeyStore(KeyStore):
    def __init__(self, db: Database) -> None:
        self.db = db

    async def migrate(self) -> SqlKeyStore:
        await self.db.migrate("keys", KEY_MIGRATIONS)
        return self

    async def create(self, record: KeyRecord) -> KeyRecord:
        await self.db.execute(
            f"INSERT INTO ferro_keys ({_KEY_FIELDS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            record.id,
            record.name,
            record.key_hash,
            record.prefix,
            orjson.dumps(record.scopes).decode(),
            record.created_at,
            record.expires_at,
            record.revoked_at,
            record.rotated_at,
            record.last_used_at,
            record.usage_count,
            orjson.dumps(record.allowed_models).decode(),
            record.rpm_limit,
            record.tpm_limit,
            record.budget_usd,
        )
        return record

    async def get(self, key_id: str) -> KeyRecord | None:
        row = await self.db.fetchone(f"SELECT {_KEY_FIELDS} FROM ferro_keys WHERE id = ?", key_id)
        return _one("key", row, key_from_fields)

    async def get_by_hash(self, key_hash: str) -> KeyRecord | None:
        row = await self.db.fetchone(f"SELECT {_KEY_FIELDS} FROM ferro_keys WHERE key_hash = ?", key_hash)
        return _one("key", row, key_from_fields)

    async def list(self) -> list[KeyRecord]:
        rows = await self.db.fetchall(f"SELECT {_KEY_FIELDS} FROM ferro_keys ORDER BY created_at, id")
        return _decoded("key", rows, key_from_fields)

    async def update(self, record: KeyRecord) -> None:
        await self.db.execute(
            "UPDATE ferro_keys SET name = ?, key_hash = ?, prefix = ?, scopes = ?, expires_at = ?,"
            " revoked_at = ?, rotated_at = ?, allowed_models = ?, rpm_limit = ?, tpm_limit = ?,"
            " budget_usd = ? WHERE id = ?",
            record.name,
            record.key_hash,
            record.prefix,
            orjson.dumps(record.scopes).decode(),
            record.expires_at,
            record.revoked_at,
            record.rotated_at,
            orjson.dumps(record.allowed_models).decode(),
            record.rpm_limit,
            record.tpm_limit,
            record.budget_usd,
            record.id,
        )

    async def delete(self, key_id: str) -> bool:
        return await self.db.execute("DELETE FROM ferro_keys WHERE id = ?", key_id) > 0

    async def add_usage(self, usage: dict[str, tuple[int, float]]) -> None:
        if not usage:
            return
        await self.db.executemany(
            "UPDATE ferro_keys SET usage_count = usage_count + ?,"
            " last_used_at = CASE WHEN last_used_at IS NULL OR last_used_at < ? THEN ? ELSE last_used_at END"
            " WHERE id = ?",
            [(count, last, last, key_id) for key_id, (count, last) in usage.items()],
        )


_VERSION_FIELDS = "version, document, actor, source, created_at, digest, rolled_back_from"


class SqlConfigStore(ConfigStore):
    def __init__(self, db: Database) -> None:
        self.db = db

    async def migrate(self) -> SqlConfigStore:
        await self.db.migrate("config", CONFIG_MIGRATIONS)
        return self

    async def add(
        self, document: dict[str, Any], actor: str, source: str, rolled_back_from: int | None = None
    ) -> ConfigVersion:
        now = time.time()
        digest = document_digest(document)
        row = await self.db.fetchall(
            "INSERT INTO ferro_config_versions (document, actor, source, created_at, digest,"
            " rolled_back_from) VALUES (?, ?, ?, ?, ?, ?) RETURNING version",
            orjson.dumps(document).decode(),
            actor,
            source,
            now,
            digest,
            rolled_back_from,
        )
        return ConfigVersion(int(row[0]["version"]), document, actor, source, now, digest, rolled_back_from)

    async def latest(self) -> ConfigVersion | None:
        row = await self.db.fetchone(
            f"SELECT {_VERSION_FIELDS} FROM ferro_config_versions ORDER BY version DESC LIMIT 1"
        )
        return _one("config version", row, version_from_fields)

    async def get(self, version: int) -> ConfigVersion | None:
        row = await self.db.fetchone(
            f"SELECT {_VERSION_FIELDS} FROM ferro_config_versions WHERE version = ?", version
        )
        return _one("config version", row, version_from_fields)

    async def history(self, limit: int = 50, offset: int = 0) -> tuple[list[ConfigVersion], int]:
        rows = await self.db.fetchall(
            f"SELECT {_VERSION_FIELDS} FROM ferro_config_versions ORDER BY version DESC LIMIT ? OFFSET ?",
            limit,
            offset,
        )
        total = await self.db.fetchone("SELECT COUNT(*) AS n FROM ferro_config_versions")
        return _decoded("config version", rows, version_from_fields), int(total["n"] if total else 0)


class SqlAuditStore(AuditStore):
    def __init__(self, db: Database) -> None:
        self.db = db

    async def add(self, actor: str, action: str, target: str, detail: dict[str, Any]) -> None:
        await self.db.execute(
            "INSERT INTO ferro_audit (ts, actor, action, target, detail) VALUES (?, ?, ?, ?, ?)",
            time.time(),
            actor,
            action,
            target,
            orjson.dumps(detail, default=str).decode(),
        )

    async def list(
        self, limit: int = 50, offset: int = 0, action: str | None = None
    ) -> tuple[list[AuditEntry], int]:
        where, args = ("WHERE action LIKE ?", [action + "%"]) if action else ("", [])
        rows = await self.db.fetchall(
            f"SELECT id, ts, actor, action, target, detail FROM ferro_audit {where}"
            " ORDER BY id DESC LIMIT ? OFFSET ?",
            *args,
            limit,
            offset,
        )
        total = await self.db.fetchone(f"SELECT COUNT(*) AS n FROM ferro_audit {where}", *args)
        return _decoded("audit entry", rows, audit_from_fields), int(total["n"] if total else 0)


_LOG_INSERT = (
    f"INSERT INTO ferro_request_logs ({', '.join(LOG_COLUMNS)}) VALUES ({', '.join('?' * len(LOG_COLUMNS))})"
)
_STATS_COLUMNS = "ts, provider, model, status, prompt_tokens, completion_tokens, total_tokens, cost_usd, latency_ms, ttft_ms"


def _log_values(row: dict[str, Any]) -> tuple[Any, ...]:
    values = []
    for column in LOG_COLUMNS:
        value = row.get(column)
        if column == "guardrail_hits" and value is not None and not isinstance(value, str):
            value = orjson.dumps(value).decode()
        elif column in ("stream", "cache_hit"):
            value = 1 if value else 0
        elif column in ("prompt_tokens", "completion_tokens", "total_tokens", "status"):
            value = int(value or 0)
        values.append(value)
    return tuple(values)


def _log_from_row(row: dict[str, Any]) -> dict[str, Any]:
    check_log_row(row)
    hits = row.get("guardrail_hits")
    if isinstance(hits, str):
        try:
            row["guardrail_hits"] = orjson.loads(hits)
        except orjson.JSONDecodeError:
            pass
    return row


class SqlLogStore(LogStore):
    def __init__(self, db: Database) -> None:
        self.db = db

    async def migrate(self) -> SqlLogStore:
        await self.db.migrate("request_logs", LOG_MIGRATIONS)
        return self

    async def insert_many(self, rows: list[dict[str, Any]]) -> None:
        if rows:
            await self.db.executemany(_LOG_INSERT, [_log_values(r) for r in rows])

    @staticmethod
    def _where(q: LogQuery) -> tuple[str, list[Any]]:
        clauses: list[str] = []
        args: list[Any] = []
        for column, value in (("model", q.model), ("provider", q.provider), ("key_id", q.key_id)):
            if value:
                clauses.append(f"{column} = ?")
                args.append(value)
        status_range = q.status_range()
        if status_range:
            clauses.append("status BETWEEN ? AND ?")
            args.extend(status_range)
        if q.since is not None:
            clauses.append("ts >= ?")
            args.append(q.since)
        if q.until is not None:
            clauses.append("ts <= ?")
            args.append(q.until)
        return ("WHERE " + " AND ".join(clauses)) if clauses else "", args

    async def _count(self, where: str, args: list[Any]) -> int:
        row = await self.db.fetchone(f"SELECT COUNT(*) AS n FROM ferro_request_logs {where}", *args)
        return int(row["n"]) if row else 0

    async def query(self, q: LogQuery) -> tuple[list[dict[str, Any]], int]:
        where, args = self._where(q)
        rows = await self.db.fetchall(
            f"SELECT {', '.join(LOG_COLUMNS)} FROM ferro_request_logs {where}"
            " ORDER BY ts DESC LIMIT ? OFFSET ?",
            *args,
            q.limit,
            q.offset,
        )
        return _decoded("request log", rows, _log_from_row), await self._count(where, args)

    async def delete(self, q: LogQuery) -> int:
        where, args = self._where(q)
        return await self.db.execute(f"DELETE FROM ferro_request_logs {where}", *args)

    async def stats_rows(self, q: LogQuery, cap: int) -> tuple[list[dict[str, Any]], int]:
        where, args = self._where(q)
        rows = await self.db.fetchall(
            f"SELECT {_STATS_COLUMNS} FROM ferro_request_logs {where} ORDER BY ts DESC LIMIT ?", *args, cap
        )
        return _decoded("request log", rows, check_log_row), await self._count(where, args)
