"""Gateway keys on /v1, driven with the official OpenAI SDK: required when keys exist or
`auth.required`, allowed models, revocation and rotation, shared stores across sidecars."""

from __future__ import annotations

import asyncio
import time

import openai
import pytest

from tests import test_stores_backends as backends
from tests.test_admin import BOOT, Admin, admin_env

persistent_env = backends.persistent_env


def client(running, key: str) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(api_key=key, base_url=running.proxy_url + "/v1", max_retries=0)


async def chat(running, key: str, model: str = "gpt-4o-mini") -> str:
    resp = await client(running, key).chat.completions.create(
        model=model, messages=[{"role": "user", "content": "hi"}]
    )
    return resp.choices[0].message.content


async def test_open_until_a_proxy_key_exists_then_keys_are_required(gateway_factory, fake_openai):
    running = await gateway_factory(env=admin_env(fake_openai.base_url))
    assert await chat(running, "sk-placeholder") == fake_openai.reply_text  # no keys yet: open

    admin = Admin(running.admin_url, BOOT)
    key = await admin.create_key("app", ["proxy"], allowed_models=["gpt-4o-mini", "text-embedding-*"])
    with pytest.raises(openai.AuthenticationError) as err:
        await chat(running, "sk-placeholder")
    assert err.value.status_code == 401 and err.value.body["code"] == "missing_api_key"

    assert await chat(running, key["key"]) == fake_openai.reply_text
    upstream = fake_openai.requests[-1].headers
    assert upstream["Authorization"] == "Bearer sk-test-upstream-key"  # the provider key, never ours
    assert key["key"] not in str(fake_openai.requests[-1].raw)

    emb = await client(running, key["key"]).embeddings.create(model="text-embedding-3-small", input="x")
    assert len(emb.data) == 1
    with pytest.raises(openai.PermissionDeniedError) as denied:
        await chat(running, key["key"], model="gpt-4o")
    assert denied.value.body["code"] == "model_not_allowed"

    with pytest.raises(openai.AuthenticationError):
        await chat(running, "sk-ferro-made-up-key-000000000000")

    await admin.ok("POST", f"/admin/keys/{key['id']}/revoke")
    with pytest.raises(openai.AuthenticationError) as revoked:
        await chat(running, key["key"])
    assert "revoked" in revoked.value.body["message"] and key["key"] not in revoked.value.body["message"]


async def test_rotation_kills_the_old_secret_and_usage_is_counted(gateway_factory, fake_openai):
    running = await gateway_factory(env=admin_env(fake_openai.base_url))
    admin = Admin(running.admin_url, BOOT)
    key = await admin.create_key("app", ["proxy"])
    for _ in range(3):
        await chat(running, key["key"])
    rotated = await admin.ok("POST", f"/admin/keys/{key['id']}/rotate")
    with pytest.raises(openai.AuthenticationError):
        await chat(running, key["key"])
    await chat(running, rotated["key"])
    await running.gateway.services["stores"].key_usage.flush()
    usage = await admin.ok("GET", "/admin/keys/usage")
    assert usage["data"][0]["id"] == key["id"] and usage["data"][0]["usage_count"] == 4
    assert usage["data"][0]["last_used_at"] is not None and usage["summary"]["total_usage"] == 4


async def test_auth_required_rejects_everything_without_a_key(gateway_factory, fake_openai):
    running = await gateway_factory({"auth": {"required": True}}, env=admin_env(fake_openai.base_url))
    with pytest.raises(openai.AuthenticationError):
        await chat(running, "sk-my-own-provider-key")
    read_only = await Admin(running.admin_url, BOOT).create_key("viewer", ["read_only"])
    with pytest.raises(openai.PermissionDeniedError) as err:
        await chat(running, read_only["key"])
    assert err.value.body["code"] == "insufficient_scope"
    with pytest.raises(openai.AuthenticationError):  # bootstrap keys are for the admin API only
        await chat(running, BOOT)
    assert not fake_openai.requests


async def test_an_expired_key_is_refused(gateway_factory, fake_openai):
    running = await gateway_factory(env=admin_env(fake_openai.base_url))
    admin = Admin(running.admin_url, BOOT)
    key = await admin.create_key("short", ["proxy"], expires_at=time.time() - 5)
    with pytest.raises(openai.AuthenticationError) as err:
        await chat(running, key["key"])
    assert "expired" in err.value.body["message"]


async def test_revocation_reaches_every_sidecar_sharing_the_store(
    gateway_factory, fake_openai, persistent_env
):
    env = {**admin_env(fake_openai.base_url), **persistent_env, "API_KEY_CACHE_SECONDS": "1"}
    first = await gateway_factory(env=env)
    second = await gateway_factory(env=env)
    key = await Admin(first.admin_url, BOOT).create_key("shared", ["proxy"])
    assert await chat(second, key["key"]) == fake_openai.reply_text  # created on one, valid on the other
    await Admin(first.admin_url, BOOT).ok("POST", f"/admin/keys/{key['id']}/revoke")
    refused = False
    for _ in range(100):  # the other sidecar's cache holds a validation for at most 1 s here
        try:
            await chat(second, key["key"])
        except openai.AuthenticationError:
            refused = True
            break
        await asyncio.sleep(0.05)
    assert refused, "the revoked key still works on the second sidecar"
