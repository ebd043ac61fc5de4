"""`/admin/keys`: create, list, inspect, update, revoke, rotate and delete gateway keys.

The full key is in the answer to create and rotate only (`key`); stores keep its hash.
The last active admin key cannot be revoked, deleted or lose its admin scope.
"""

from __future__ import annotations

import time
from typing import Any

from aiohttp import web

from ferro_proxy.admin.credentials import validator_for
from ferro_proxy.admin.http import (
    GATEWAY,
    audit,
    int_param,
    json_response,
    not_found,
    parse_time,
    read_object,
)
from ferro_proxy.errors import GatewayError, bad_request
from ferro_proxy.stores.base import KeyStore
from ferro_proxy.stores.records import KEY_PREFIX, SCOPES, KeyRecord, hash_token, mint_key, new_token

_POLICY_FIELDS = ("allowed_models", "rpm_limit", "tpm_limit", "budget_usd")


def key_store(request: web.Request) -> KeyStore:
    store = request.app[GATEWAY].services.get("keys")
    if store is None:
        raise GatewayError(501, "the key store is not enabled", code="not_implemented")
    return store


def _scopes(value: Any) -> list[str]:
    if not isinstance(value, list) or not value or not all(isinstance(s, str) for s in value):
        raise bad_request(f"scopes: expected a non-empty list of {', '.join(SCOPES)}", param="scopes")
    unknown = [s for s in value if s not in SCOPES]
    if unknown:
        raise bad_request(f"scopes: unknown {unknown} (expected {', '.join(SCOPES)})", param="scopes")
    return list(dict.fromkeys(value))


def _policy(body: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if "allowed_models" in body:
        models = body["allowed_models"] or []
        if not isinstance(models, list) or not all(isinstance(m, str) and m for m in models):
            raise bad_request(
                "allowed_models: expected a list of model names or patterns", param="allowed_models"
            )
        out["allowed_models"] = models
    for name, kind in (("rpm_limit", int), ("tpm_limit", int), ("budget_usd", float)):
        if name in body:
            value = body[name]
            ok = value is None or (
                isinstance(value, int | float) and not isinstance(value, bool) and value >= 0
            )
            if not ok or (kind is int and value is not None and not isinstance(value, int)):
                raise bad_request(f"{name}: expected a non-negative {kind.__name__} or null", param=name)
            out[name] = value
    return out


def _expiry(body: dict[str, Any]) -> float | None:
    if "expires_in" in body and body["expires_in"] is not None:
        seconds = body["expires_in"]
        if not isinstance(seconds, int | float) or isinstance(seconds, bool) or seconds <= 0:
            raise bad_request("expires_in: expected seconds > 0", param="expires_in")
        return time.time() + float(seconds)
    return parse_time(body.get("expires_at"), "expires_at")


async def _get_or_404(request: web.Request) -> KeyRecord:
    record = await key_store(request).get(request.match_info["id"])
    if record is None:
        raise not_found(f"key {request.match_info['id']!r}")
    return record


async def _guard_last_admin(store: KeyStore, record: KeyRecord, action: str) -> None:
    if "admin" not in record.scopes or not record.active:
        return
    others = [k for k in await store.list() if k.id != record.id and k.active and "admin" in k.scopes]
    if not others:
        raise GatewayError(
            409,
            f"refusing to {action} the last active admin key; create another admin key first",
            code="last_admin_key",
        )


def _changed(request: web.Request) -> None:
    validator_for(request.app[GATEWAY]).forget()


async def create_key(request: web.Request) -> web.Response:
    body = await read_object(request)
    name = body.get("name")
    if not isinstance(name, str) or not name.strip():
        raise bad_request("name: required", param="name")
    scopes = _scopes(body.get("scopes", ["proxy"]))
    record, token = mint_key(name.strip(), scopes, expires_at=_expiry(body), **_policy(body))
    await key_store(request).create(record)
    _changed(request)
    await audit(request, "key.create", record.id, {"name": record.name, "scopes": scopes})
    return json_response({**record.public(), "key": token}, status=201)


async def list_keys(request: web.Request) -> web.Response:
    keys = await key_store(request).list()
    return json_response({"object": "list", "data": [k.public() for k in keys]})


async def get_key(request: web.Request) -> web.Response:
    return json_response((await _get_or_404(request)).public())


async def update_key(request: web.Request) -> web.Response:
    store = key_store(request)
    record = await _get_or_404(request)
    body = await read_object(request)
    allowed = {"name", "scopes", "expires_at", "expires_in", *_POLICY_FIELDS}
    unknown = sorted(set(body) - allowed)
    if unknown:
        raise bad_request(f"unknown fields {unknown} (expected {', '.join(sorted(allowed))})")
    if "name" in body:
        if not isinstance(body["name"], str) or not body["name"].strip():
            raise bad_request("name: must be a non-empty string", param="name")
        record.name = body["name"].strip()
    if "scopes" in body:
        scopes = _scopes(body["scopes"])
        if "admin" not in scopes:
            await _guard_last_admin(store, record, "remove the admin scope from")
        record.scopes = scopes
    if "expires_at" in body or "expires_in" in body:
        record.expires_at = _expiry(body)
    for name, value in _policy(body).items():
        setattr(record, name, value)
    await store.update(record)
    _changed(request)
    await audit(request, "key.update", record.id, {"fields": sorted(body)})
    return json_response(record.public())


async def delete_key(request: web.Request) -> web.Response:
    store = key_store(request)
    record = await _get_or_404(request)
    await _guard_last_admin(store, record, "delete")
    await store.delete(record.id)
    _changed(request)
    await audit(request, "key.delete", record.id, {"name": record.name})
    return json_response({"id": record.id, "deleted": True})


async def revoke_key(request: web.Request) -> web.Response:
    store = key_store(request)
    record = await _get_or_404(request)
    await _guard_last_admin(store, record, "revoke")
    if record.revoked_at is None:
        record.revoked_at = time.time()
        await store.update(record)
    _changed(request)
    await audit(request, "key.revoke", record.id, {"name": record.name})
    return json_response(record.public())


async def rotate_key(request: web.Request) -> web.Response:
    store = key_store(request)
    record = await _get_or_404(request)
    if record.revoked_at is not None:
        raise GatewayError(409, "a revoked key cannot be rotated", code="key_revoked")
    token = new_token()
    record.key_hash = hash_token(token)
    record.prefix = token[: len(KEY_PREFIX) + 4]
    record.rotated_at = time.time()
    await store.update(record)
    _changed(request)
    await audit(request, "key.rotate", record.id, {"name": record.name})
    return json_response({**record.public(), "key": token})


async def key_usage(request: web.Request) -> web.Response:
    limit = int_param(request, "limit", 20, low=1, high=100)
    offset = int_param(request, "offset", 0)
    sort = request.query.get("sort", "usage")
    if sort not in ("usage", "last_used"):
        raise bad_request("invalid sort: must be usage or last_used", param="sort")
    keys = await key_store(request).list()
    if sort == "usage":
        keys.sort(key=lambda k: (k.usage_count, k.last_used_at or 0.0), reverse=True)
    else:
        keys.sort(key=lambda k: (k.last_used_at or 0.0, k.usage_count), reverse=True)
    page = keys[offset : offset + limit]
    return json_response(
        {
            "object": "list",
            "data": [k.public() for k in page],
            "summary": {
                "total_keys": len(keys),
                "active_keys": sum(1 for k in keys if k.active),
                "total_usage": sum(k.usage_count for k in keys),
                "returned_keys": len(page),
            },
        }
    )
