"""`/admin/keys`: create, list, inspect, update, revoke, rotate and delete gateway keys.

The full key is in the answer to create and rotate only (`key`); stores keep its hash.
The last active admin key cannot be revoked, deleted or lose its admin scope.
"""

from __future__ import annotations

import time

from aiohttp import web

from ferro_proxy.admin import key_input
from ferro_proxy.admin.credentials import validator_for
from ferro_proxy.admin.http import GATEWAY, audit, int_param, json_response, not_found, read_object
from ferro_proxy.errors import GatewayError, bad_request
from ferro_proxy.stores.base import KeyStore
from ferro_proxy.stores.records import KEY_PREFIX, KeyRecord, hash_token, mint_key, new_token


def key_store(request: web.Request) -> KeyStore:
    store = request.app[GATEWAY].services.get("keys")
    if store is None:
        raise GatewayError(501, "the key store is not enabled", code="not_implemented")
    return store


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
    name = key_input.key_name(body.get("name"))
    scopes = key_input.scopes(body.get("scopes", ["proxy"]))
    record, token = mint_key(name, scopes, expires_at=key_input.expiry(body), **key_input.policy(body))
    shown = record.public()  # fails here, before the store, if a field could not be shown
    await key_store(request).create(record)
    _changed(request)
    await audit(request, "key.create", record.id, {"name": record.name, "scopes": scopes})
    return json_response({**shown, "key": token}, status=201)


async def list_keys(request: web.Request) -> web.Response:
    keys = await key_store(request).list()
    return json_response({"object": "list", "data": [k.public() for k in keys]})


async def get_key(request: web.Request) -> web.Response:
    return json_response((await _get_or_404(request)).public())


async def update_key(request: web.Request) -> web.Response:
    store = key_store(request)
    record = await _get_or_404(request)
    body = await read_object(request)
    allowed = {"name", "scopes", "expires_at", "expires_in", *key_input.POLICY_FIELDS}
    unknown = sorted(str(k)[:40] for k in set(body) - allowed)[:10]
    if unknown:
        raise bad_request(f"unknown fields {unknown} (expected {', '.join(sorted(allowed))})")
    # Every field is checked before the record changes or anything is stored.
    name = key_input.key_name(body["name"]) if "name" in body else record.name
    scopes = key_input.scopes(body["scopes"]) if "scopes" in body else record.scopes
    expires_at = key_input.expiry(body) if "expires_at" in body or "expires_in" in body else record.expires_at
    policy = key_input.policy(body)
    if "admin" not in scopes:
        await _guard_last_admin(store, record, "remove the admin scope from")
    record.name, record.scopes, record.expires_at = name, scopes, expires_at
    for field, value in policy.items():
        setattr(record, field, value)
    shown = record.public()
    await store.update(record)
    _changed(request)
    await audit(request, "key.update", record.id, {"fields": sorted(body)})
    return json_response(shown)


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
