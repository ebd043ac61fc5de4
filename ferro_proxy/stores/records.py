"""The records the stores keep: gateway keys, config versions, audit entries, request logs.

Timestamps are float seconds since the epoch everywhere in storage; the admin API shows
them as RFC 3339 strings (`iso()`).
"""

from __future__ import annotations

import hashlib
import math
import re
import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson

KEY_PREFIX = "sk-ferro-"
SCOPES = ("admin", "read_only", "proxy")
# Stored times are epoch seconds from 1970 to the end of year 9999 (what RFC 3339 can write).
MAX_TIME = datetime(9999, 12, 31, 23, 59, 59, tzinfo=UTC).timestamp()
MAX_INT = 2**63 - 1  # the SQL stores' integers


class UndecodableRecord(ValueError):
    """A stored row that cannot be used; the message names the field, never its value."""


def row_ref(value: Any) -> str:
    """A row's id as it may appear in a log line: plain ids as they are, anything else hidden."""
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    if isinstance(value, str) and re.fullmatch(r"[A-Za-z0-9_.:-]{1,64}", value):
        return value
    return "<unreadable id>"


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


def _time(value: Any, name: str, *, required: bool = False) -> float | None:
    if value is None and not required:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise UndecodableRecord(f"{name}: not a number")
    if (isinstance(value, float) and not math.isfinite(value)) or not 0 <= value <= MAX_TIME:
        raise UndecodableRecord(f"{name}: not a time from 1970 to year 9999")
    return float(value)


def _int(value: Any, name: str, *, required: bool = False) -> int | None:
    if value is None and not required:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not -MAX_INT <= value <= MAX_INT:
        raise UndecodableRecord(f"{name}: not an integer")
    return value


def _number(value: Any, name: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise UndecodableRecord(f"{name}: not a number")
    if isinstance(value, float) and not math.isfinite(value):
        raise UndecodableRecord(f"{name}: not a finite number")
    return value


def _text(value: Any, name: str) -> str:
    if not isinstance(value, str):
        raise UndecodableRecord(f"{name}: not text")
    return value


def _decoded(value: Any, name: str) -> Any:
    """A field stored as JSON text, decoded (a value the driver already decoded passes as is)."""
    if isinstance(value, str | bytes):
        try:
            return orjson.loads(value)
        except orjson.JSONDecodeError:
            raise UndecodableRecord(f"{name}: not JSON") from None
    return value


def _strings(value: Any, name: str) -> list[str]:
    value = _decoded(value, name)
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise UndecodableRecord(f"{name}: not a list of strings")
    return list(value)


def key_from_fields(row: Mapping[str, Any]) -> KeyRecord:
    """A key record from stored fields (lists as JSON text or lists), each checked.

    Raises UndecodableRecord naming the first bad field."""
    return KeyRecord(
        id=_text(row.get("id"), "id"),
        name=_text(row.get("name"), "name"),
        key_hash=_text(row.get("key_hash"), "key_hash"),
        prefix=_text(row.get("prefix"), "prefix"),
        scopes=_strings(row.get("scopes"), "scopes"),
        created_at=_time(row.get("created_at"), "created_at", required=True) or 0.0,
        expires_at=_time(row.get("expires_at"), "expires_at"),
        revoked_at=_time(row.get("revoked_at"), "revoked_at"),
        rotated_at=_time(row.get("rotated_at"), "rotated_at"),
        last_used_at=_time(row.get("last_used_at"), "last_used_at"),
        usage_count=_int(row.get("usage_count") or 0, "usage_count") or 0,
        allowed_models=_strings(
            row.get("allowed_models") if row.get("allowed_models") is not None else [], "allowed_models"
        ),
        rpm_limit=_int(row.get("rpm_limit"), "rpm_limit"),
        tpm_limit=_int(row.get("tpm_limit"), "tpm_limit"),
        budget_usd=_number(row.get("budget_usd"), "budget_usd"),
    )


def check_key(record: KeyRecord) -> KeyRecord:
    """`record` if every field is usable, else UndecodableRecord naming the field."""
    key_from_fields({name: getattr(record, name) for name in KeyRecord.__slots__})
    return record


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


def _json_object(value: Any, name: str) -> dict[str, Any]:
    """A stored JSON object (as text or already decoded), or UndecodableRecord naming the field."""
    value = _decoded(value, name)
    if not isinstance(value, dict):
        raise UndecodableRecord(f"{name}: not an object")
    return value


def version_from_fields(row: Mapping[str, Any]) -> ConfigVersion:
    """A config version from stored fields (the document as JSON text), each checked."""
    document = _json_object(row.get("document"), "document")
    return ConfigVersion(
        version=_int(row.get("version"), "version", required=True) or 0,
        document=document,
        actor=_text(row.get("actor"), "actor"),
        source=_text(row.get("source"), "source"),
        created_at=_time(row.get("created_at"), "created_at", required=True) or 0.0,
        digest=_text(row.get("digest"), "digest"),
        rolled_back_from=_int(row.get("rolled_back_from"), "rolled_back_from"),
    )


def audit_from_fields(row: Mapping[str, Any]) -> AuditEntry:
    detail = _json_object(row.get("detail"), "detail")
    return AuditEntry(
        id=_int(row.get("id"), "id", required=True) or 0,
        ts=_time(row.get("ts"), "ts", required=True) or 0.0,
        actor=_text(row.get("actor"), "actor"),
        action=_text(row.get("action"), "action"),
        target=_text(row.get("target"), "target"),
        detail=detail,
    )


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


_LOG_INTS = ("status", "prompt_tokens", "completion_tokens", "total_tokens")
_LOG_NUMBERS = ("cost_usd", "latency_ms", "ttft_ms")


def check_log_row(row: dict[str, Any]) -> dict[str, Any]:
    """`row` if its times and numbers are usable, else UndecodableRecord naming the column."""
    _time(row.get("ts"), "ts", required=True)
    _time(row.get("finished_at"), "finished_at")
    for name in _LOG_INTS:
        _int(row.get(name), name)
    for name in _LOG_NUMBERS:
        _number(row.get(name), name)
    return row


def public_log(row: dict[str, Any]) -> dict[str, Any]:
    out = dict(row)
    out["ts"] = iso(row.get("ts"))
    out["finished_at"] = iso(row.get("finished_at"))
    out["stream"] = bool(row.get("stream"))
    out["cache_hit"] = bool(row.get("cache_hit"))
    return out
