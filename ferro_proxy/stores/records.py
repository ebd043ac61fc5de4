"""The records the stores keep: gateway keys, config versions, audit entries, request logs.

Timestamps are float seconds since the epoch everywhere in storage; the admin API shows
them as RFC 3339 strings (`iso()`).
"""

from __future__ import annotations

import hashlib
import secrets
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

KEY_PREFIX = "sk-ferro-"
SCOPES = ("admin", "read_only", "proxy")


def iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def hash_token(token: str) -> str:
    """Keys carry 256 random bits, so a plain SHA-256 is a safe, fast lookup hash."""
    return hashlib.sha256(token.encode()).hexdigest()


def new_token() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


def new_key_id() -> str:
    return "key_" + secrets.token_hex(8)


@dataclass(slots=True)
class KeyRecord:
    id: str
    name: str
    key_hash: str
    prefix: str  # the first characters of the key, to recognise it in lists
    scopes: list[str]
    created_at: float
    expires_at: float | None = None
    revoked_at: float | None = None
    rotated_at: float | None = None
    last_used_at: float | None = None
    usage_count: int = 0
    allowed_models: list[str] = field(default_factory=list)
    rpm_limit: int | None = None
    tpm_limit: int | None = None
    budget_usd: float | None = None

    def status(self, now: float | None = None) -> str:
        if self.revoked_at is not None:
            return "revoked"
        if self.expires_at is not None and self.expires_at <= (now or time.time()):
            return "expired"
        return "active"

    @property
    def active(self) -> bool:
        return self.status() == "active"

    def public(self) -> dict[str, Any]:
        """The key as the admin API shows it: never the hash, never the secret."""
        return {
            "id": self.id,
            "name": self.name,
            "prefix": self.prefix,
            "scopes": list(self.scopes),
            "status": self.status(),
            "active": self.active,
            "created_at": iso(self.created_at),
            "expires_at": iso(self.expires_at),
            "revoked_at": iso(self.revoked_at),
            "rotated_at": iso(self.rotated_at),
            "last_used_at": iso(self.last_used_at),
            "usage_count": self.usage_count,
            "allowed_models": list(self.allowed_models),
            "rpm_limit": self.rpm_limit,
            "tpm_limit": self.tpm_limit,
            "budget_usd": self.budget_usd,
        }


def mint_key(
    name: str,
    scopes: list[str],
    *,
    expires_at: float | None = None,
    allowed_models: list[str] | None = None,
    rpm_limit: int | None = None,
    tpm_limit: int | None = None,
    budget_usd: float | None = None,
) -> tuple[KeyRecord, str]:
    """A new key record and its secret (shown once, never stored)."""
    token = new_token()
    record = KeyRecord(
        id=new_key_id(),
        name=name,
        key_hash=hash_token(token),
        prefix=token[: len(KEY_PREFIX) + 4],
        scopes=list(scopes),
        created_at=time.time(),
        expires_at=expires_at,
        allowed_models=list(allowed_models or []),
        rpm_limit=rpm_limit,
        tpm_limit=tpm_limit,
        budget_usd=budget_usd,
    )
    return record, token


@dataclass(slots=True)
class ConfigVersion:
    version: int
    document: dict[str, Any]  # as written (with ${VAR} references), never env-expanded
    actor: str
    source: str
    created_at: float
    digest: str
    rolled_back_from: int | None = None

    def summary(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "created_at": iso(self.created_at),
            "actor": self.actor,
            "source": self.source,
            "digest": self.digest,
            "rolled_back_from": self.rolled_back_from,
        }


@dataclass(slots=True)
class AuditEntry:
    id: int
    ts: float
    actor: str
    action: str
    target: str
    detail: dict[str, Any]

    def public(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "ts": iso(self.ts),
            "actor": self.actor,
            "action": self.action,
            "target": self.target,
            "detail": self.detail,
        }


# The request-log row: a plain dict with these columns (kept as dicts: they are built on
# the hot path and written in batches, a class per row buys nothing).
LOG_COLUMNS = (
    "id",
    "ts",
    "finished_at",
    "key_id",
    "endpoint",
    "provider",
    "model",
    "status",
    "stream",
    "prompt_tokens",
    "completion_tokens",
    "total_tokens",
    "cost_usd",
    "latency_ms",
    "ttft_ms",
    "error",
    "cache_hit",
    "guardrail_hits",
    "request_body",
    "response_body",
)


def public_log(row: dict[str, Any]) -> dict[str, Any]:
    out = dict(row)
    out["ts"] = iso(row.get("ts"))
    out["finished_at"] = iso(row.get("finished_at"))
    out["stream"] = bool(row.get("stream"))
    out["cache_hit"] = bool(row.get("cache_hit"))
    return out
