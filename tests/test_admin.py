"""The admin API on a real admin listener: the scope matrix on every backend, keys,
config versions with redaction and rollback, logs and the audit trail."""

from __future__ import annotations

from typing import Any

import aiohttp

from ferro_proxy.admin.routes import ROUTES
from tests import test_stores_backends as backends

store_env = backends.store_env

BOOT = "boot-admin-secret-1"
BOOT_RO = "boot-read-only-secret-1"


def admin_env(fake_url: str, extra: dict[str, str] | None = None) -> dict[str, str]:
    return {
        "OPENAI_API_KEY": "sk-test-upstream-key",
        "OPENAI_BASE_URL": fake_url,
        "ADMIN_BOOTSTRAP_ENABLED": "true",
        "ADMIN_BOOTSTRAP_KEY": BOOT,
        "ADMIN_BOOTSTRAP_READ_ONLY_KEY": BOOT_RO,
        **(extra or {}),
    }


class Admin:
    """A tiny client for the admin API."""

    def __init__(self, base_url: str, key: str | None) -> None:
        self.base_url = base_url
        self.key = key

    async def call(
        self, method: str, path: str, body: Any = None, key: str | None = "default"
    ) -> tuple[int, Any]:
        token = self.key if key == "default" else key
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        async with aiohttp.ClientSession() as session:
            async with session.request(method, self.base_url + path, json=body, headers=headers) as resp:
                data = await resp.json(content_type=None)
                return resp.status, data

    async def ok(self, method: str, path: str, body: Any = None) -> Any:
        status, data = await self.call(method, path, body)
        assert status in (200, 201), (method, path, status, data)
        return data

    async def create_key(self, name: str, scopes: list[str], **policy: Any) -> dict[str, Any]:
        return await self.ok("POST", "/admin/keys", {"name": name, "scopes": scopes, **policy})


async def test_scope_matrix_every_route(gateway_factory, fake_openai, store_env):
    """Every admin route × no key, a read-only key, an admin key and a revoked key."""
    running = await gateway_factory(env={**admin_env(fake_openai.base_url), **store_env})
    boot = Admin(running.admin_url, BOOT)
    admin_key = (await boot.create_key("ops", ["admin"]))["key"]
    read_key = (await boot.create_key("viewer", ["read_only"]))["key"]
    revoked = await boot.create_key("gone", ["admin"])
    await boot.ok("POST", f"/admin/keys/{revoked['id']}/revoke")
    proxy_only = (await boot.create_key("app", ["proxy"]))["key"]

    async def victim() -> str:
        return (await boot.create_key("victim", ["proxy"]))["id"]

    bodies = {
        ("POST", "/admin/keys"): {"name": "made", "scopes": ["proxy"]},
        ("PUT", "/admin/keys/{id}"): {"name": "renamed"},
        ("POST", "/admin/config"): {"aliases": {"fast": "gpt-4o-mini"}},
        ("PUT", "/admin/config"): {"aliases": {"smart": "gpt-4o"}},
    }
    callers = {
        "none": None,
        "revoked": revoked["key"],
        "proxy": proxy_only,
        "read_only": read_key,
        "admin": admin_key,
    }
    seen = set()
    for method, template, _, _ in ROUTES:
        seen.add((method, template))
        read_route = method == "GET"  # the documented rule: GET needs read scope, the rest admin
        for who, token in callers.items():
            path = template.replace("{version}", "1")
            if "{id}" in path:
                path = path.replace("{id}", await victim())
            if (method, template) == ("DELETE", "/admin/logs"):
                path += "?all=true"
            status, body = await Admin(running.admin_url, token).call(
                method, path, bodies.get((method, template))
            )
            label = f"{method} {template} as {who}"
            assert set(body) == {"error"} or who in ("read_only", "admin"), label
            if who in ("none", "revoked"):
                assert status == 401 and body["error"]["type"] == "authentication_error", label
            elif who == "proxy" or (who == "read_only" and not read_route):
                assert status == 403 and body["error"]["code"] == "insufficient_scope", label
            else:
                assert status in (200, 201), (label, status, body)
    assert len(seen) == len(ROUTES) == 21


async def test_keys_lifecycle_and_last_admin_guard(gateway_factory, fake_openai):
    running = await gateway_factory(env=admin_env(fake_openai.base_url))
    boot = Admin(running.admin_url, BOOT)
    created = await boot.create_key(
        "ops",
        ["admin"],
        allowed_models=["gpt-4o*"],
        rpm_limit=60,
        tpm_limit=1000,
        budget_usd=2.5,
        expires_in=3600,
    )
    assert created["key"].startswith("sk-ferro-") and created["prefix"] == created["key"][:13]
    assert created["rpm_limit"] == 60 and created["budget_usd"] == 2.5 and created["expires_at"]
    listed = await boot.ok("GET", "/admin/keys")
    assert [k["id"] for k in listed["data"]] == [created["id"]]
    assert "key" not in listed["data"][0] and "key_hash" not in listed["data"][0]
    assert created["key"] not in str(await boot.ok("GET", f"/admin/keys/{created['id']}"))

    # the only admin key can be neither revoked, deleted nor demoted
    for method, path, body in [
        ("POST", f"/admin/keys/{created['id']}/revoke", None),
        ("DELETE", f"/admin/keys/{created['id']}", None),
        ("PUT", f"/admin/keys/{created['id']}", {"scopes": ["read_only"]}),
    ]:
        status, err = await boot.call(method, path, body)
        assert status == 409 and err["error"]["code"] == "last_admin_key", (method, path)

    second = await boot.create_key("ops-2", ["admin"])
    ops = Admin(running.admin_url, second["key"])
    assert (await ops.ok("POST", f"/admin/keys/{created['id']}/revoke"))["status"] == "revoked"
    status, err = await ops.call("DELETE", f"/admin/keys/{second['id']}")
    assert status == 409

    rotated = await ops.ok("POST", f"/admin/keys/{second['id']}/rotate")
    assert rotated["key"] != second["key"] and rotated["rotated_at"]
    status, _ = await ops.call("GET", "/admin/keys")  # the old secret died with the rotation
    assert status == 401
    ops.key = rotated["key"]
    updated = await ops.ok("PUT", f"/admin/keys/{second['id']}", {"name": "renamed", "rpm_limit": None})
    assert updated["name"] == "renamed"
    status, err = await ops.call("PUT", f"/admin/keys/{second['id']}", {"colour": "red"})
    assert status == 400 and "colour" in err["error"]["message"]
    status, err = await ops.call("POST", "/admin/keys", {"name": "x", "scopes": ["root"]})
    assert status == 400 and err["error"]["param"] == "scopes"
    status, err = await ops.call("GET", "/admin/keys/key_missing")
    assert status == 404 and err["error"]["code"] == "not_found"

    actions = [e["action"] for e in (await ops.ok("GET", "/admin/audit"))["data"]]
    assert actions[:4] == ["key.update", "key.rotate", "key.revoke", "key.create"]
    entry = (await ops.ok("GET", "/admin/audit?action=key.revoke"))["data"][0]
    assert entry["actor"] == f"key:ops-2 ({second['id']})" and entry["target"] == created["id"]


async def test_bootstrap_keys_only_when_enabled(gateway_factory, fake_openai, caplog):
    off = await gateway_factory(env={**admin_env(fake_openai.base_url), "ADMIN_BOOTSTRAP_ENABLED": "false"})
    status, err = await Admin(off.admin_url, BOOT).call("GET", "/admin/keys")
    assert status == 401 and BOOT not in str(err)
    caplog.set_level("WARNING")
    on = await gateway_factory(env=admin_env(fake_openai.base_url))
    assert (await Admin(on.admin_url, BOOT_RO).call("GET", "/admin/keys"))[0] == 200
    assert (await Admin(on.admin_url, BOOT_RO).call("POST", "/admin/keys", {"name": "x"}))[0] == 403
    assert any("bootstrap" in r.getMessage() for r in caplog.records if r.levelname == "WARNING")
    assert not any(BOOT in r.getMessage() or BOOT_RO in r.getMessage() for r in caplog.records)


SECRET = "sk-live-literal-secret-123456"


async def test_config_versions_redaction_patch_and_rollback(gateway_factory, fake_openai):
    config = {
        "providers": {
            "openai": {
                "api_key": SECRET,
                "base_url": fake_openai.base_url,
                "headers": {"Authorization": "Bearer inner-token-abcdef", "X-Team": "blue"},
            }
        },
        "aliases": {"fast": "gpt-4o-mini"},
    }
    running = await gateway_factory(config, env=admin_env(fake_openai.base_url))
    admin = Admin(running.admin_url, BOOT)
    current = await admin.ok("GET", "/admin/config")
    assert current["version"] == 1 and current["actor"] == "startup"
    shown = str(current)
    assert SECRET not in shown and "inner-token-abcdef" not in shown
    openai_cfg = current["config"]["providers"]["openai"]
    # every header value is hidden, whatever its name; the names stay
    assert openai_cfg["api_key"] == "[REDACTED]" and openai_cfg["headers"]["X-Team"] == "[REDACTED]"

    # send back what GET showed, with one change: the placeholders keep the real secret
    document = current["config"]
    document["aliases"] = {"quick": "gpt-4o-mini"}
    v2 = await admin.ok("POST", "/admin/config", document)
    assert v2["version"] == 2 and v2["actor"] == "bootstrap-admin"
    assert running.gateway.config.providers["openai"].api_key == SECRET
    assert running.gateway.config.providers["openai"].headers["X-Team"] == "blue"
    assert running.gateway.config.aliases == {"quick": "gpt-4o-mini"}

    v3 = await admin.ok("PUT", "/admin/config", {"aliases": {"fast": None, "smart": "gpt-4o"}})
    assert v3["version"] == 3 and running.gateway.config.aliases == {
        "quick": "gpt-4o-mini",
        "smart": "gpt-4o",
    }

    status, err = await admin.call("PUT", "/admin/config", {"targets": [{"weight": "heavy"}]})
    assert status == 400 and err["error"]["code"] == "invalid_config"
    assert "targets[0].virtual_key: required field missing" in err["error"]["message"]
    assert "targets[0].weight: expected number" in err["error"]["message"]
    assert running.gateway.config.aliases == {"quick": "gpt-4o-mini", "smart": "gpt-4o"}  # kept

    rolled = await admin.ok("POST", "/admin/config/rollback/1")
    assert rolled["version"] == 4 and rolled["rolled_back_from"] == 1
    assert running.gateway.config.aliases == {"fast": "gpt-4o-mini"}
    history = await admin.ok("GET", "/admin/config/history")
    assert [v["version"] for v in history["data"]] == [4, 3, 2, 1] and history["current_version"] == 4
    assert SECRET not in str(history)
    assert (await admin.call("POST", "/admin/config/rollback/99"))[0] == 404

    reset = await admin.ok("DELETE", "/admin/config")
    assert reset["version"] == 5 and reset["config"] == {}
    metrics = await _text(running.admin_url + "/metrics")
    assert 'ferro_config_reloads_total{result="success"} 4.0' in metrics
    assert 'ferro_config_reloads_total{result="error"} 1.0' in metrics


async def test_config_versions_survive_a_restart(gateway_factory, fake_openai, tmp_path):
    env = {**admin_env(fake_openai.base_url), **backends.env_for("sqlite", str(tmp_path / "state.db"))}
    first = await gateway_factory({"aliases": {"a": "gpt-4o-mini"}}, env=env)
    await Admin(first.admin_url, BOOT).ok("PUT", "/admin/config", {"aliases": {"b": "gpt-4o"}})
    await first.drain_and_stop(0.1)
    second = await gateway_factory({"aliases": {"a": "gpt-4o-mini"}}, env=env)
    history = await Admin(second.admin_url, BOOT).ok("GET", "/admin/config/history")
    assert [(v["version"], v["actor"]) for v in history["data"]] == [
        (3, "startup"),
        (2, "bootstrap-admin"),
        (1, "startup"),
    ]


async def test_admin_errors_are_openai_shaped(gateway_factory, fake_openai):
    running = await gateway_factory(env=admin_env(fake_openai.base_url))
    admin = Admin(running.admin_url, BOOT)
    for method, path, expected in [
        ("GET", "/admin/nothing-here", 404),
        ("PATCH", "/admin/keys", 405),
        ("GET", "/admin/logs?limit=abc", 400),
        ("GET", "/admin/logs?since=yesterday", 400),
        ("GET", "/admin/logs?status=teapot", 400),
        ("DELETE", "/admin/logs", 400),
    ]:
        status, body = await admin.call(method, path)
        assert status == expected and set(body["error"]) >= {"message", "type", "code"}, (method, path)
    async with aiohttp.ClientSession() as session:
        headers = {"Authorization": f"Bearer {BOOT}", "Content-Type": "application/json"}
        async with session.post(
            running.admin_url + "/admin/keys", data=b"{not json", headers=headers
        ) as resp:
            assert resp.status == 400 and (await resp.json())["error"]["code"] == "invalid_json"


async def test_providers_health_and_summary(gateway_factory, fake_openai):
    running = await gateway_factory(env=admin_env(fake_openai.base_url))
    admin = Admin(running.admin_url, BOOT_RO)
    providers = (await admin.ok("GET", "/admin/providers"))["data"]
    assert [p["name"] for p in providers] == ["openai"] and providers[0]["key_configured"] is True
    assert "sk-test-upstream-key" not in str(providers)
    health = await admin.ok("GET", "/admin/health")
    assert health["stores"] == {"config": "memory", "keys": "memory", "logs": "memory"}
    summary = await admin.ok("GET", "/admin/dashboard")
    assert summary["viewer"]["scopes"] == ["read_only"] and summary["providers"]["total"] == 1
    assert summary["config_version"] == 1


async def _text(url: str) -> str:
    async with aiohttp.ClientSession() as session, session.get(url) as resp:
        return await resp.text()


async def test_providers_show_an_open_circuit(gateway_factory, fake_openai):
    config = {
        "strategy": {"mode": "fallback"},
        "targets": [{"virtual_key": "openai", "circuit_breaker": {"failure_threshold": 1, "timeout": "60s"}}],
    }
    running = await gateway_factory(config, env=admin_env(fake_openai.base_url))
    admin = Admin(running.admin_url, BOOT_RO)
    assert (await admin.ok("GET", "/admin/providers"))["data"][0]["circuit"] == "closed"
    fake_openai.script.append({"status": 500})
    async with aiohttp.ClientSession() as session:
        body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}
        async with session.post(running.proxy_url + "/v1/chat/completions", json=body) as resp:
            assert resp.status == 502
    provider = (await admin.ok("GET", "/admin/providers"))["data"][0]
    assert provider["circuit"] == "open" and provider["targets"]["openai"]["state"] == "open"
    assert (await admin.ok("GET", "/admin/dashboard"))["providers"] == {"total": 1, "available": 0}
