"""Admin input, tried as a hostile (or careless) admin would.

Configs sent through the admin API are literal: `${VAR}` is refused with the field's path,
unless the config file lists the name in `admin_env_allowlist`, and no answer ever shows an
environment value. Key fields, version ids and log query parameters are checked before
anything is stored (400 naming the field), and a stored row that cannot be decoded is
skipped instead of breaking the whole list or other keys.
"""

from __future__ import annotations

import logging
import sqlite3
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from ferro_proxy.config import ConfigError, load_config
from ferro_proxy.server import Running
from ferro_proxy.stores.records import hash_token
from tests import test_stores_backends as backends
from tests.test_admin import BOOT, Admin, admin_env

SECRET = "SECRETx-env-value-7f3a"
HOME = "/home/SECRET-home-dir-91"
ENV_VALUES = (SECRET, HOME)
store_env = backends.store_env  # a fixture: each test on memory, SQLite (and Postgres if reachable)
env_for = backends.env_for


def env_with_secrets(fake_url: str, extra: dict[str, str] | None = None) -> dict[str, str]:
    return {**admin_env(fake_url), "SECRET_X": SECRET, "HOME": HOME, **(extra or {})}


async def raw_get(running: Running, url: str, key: str | None = BOOT) -> str:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    async with aiohttp.ClientSession() as session, session.get(url, headers=headers) as resp:
        return await resp.text()


async def everything_readable(running: Running) -> str:
    """Every place an admin or a client could read the effect of a config."""
    texts = [
        await raw_get(running, running.admin_url + path)
        for path in ("/admin/config", "/admin/config/history", "/admin/audit", "/admin/health")
    ]
    texts.append(await raw_get(running, running.proxy_url + "/v1/models", key=None))
    return "\n".join(texts)


async def chat(running: Running, key: str | None) -> int:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}
    async with aiohttp.ClientSession() as session:
        async with session.post(
            running.proxy_url + "/v1/chat/completions", json=body, headers=headers
        ) as resp:
            await resp.read()
            return resp.status


def assert_no_env_value(*texts: Any) -> None:
    blob = orjson.dumps(texts, default=str).decode()
    for value in ENV_VALUES:
        assert value not in blob


# ---------------------------------------------------------------- ${VAR} in API configs


@pytest.mark.parametrize(
    ("method", "document", "field"),
    [
        ("PUT", {"aliases": {"fast": "${HOME}"}}, "aliases.fast"),
        ("POST", {"aliases": {"fast": "gpt-4o-mini", "leak": "prefix-${SECRET_X}"}}, "aliases.leak"),
        (
            "PUT",
            {"providers": {"openai": {"base_url": "${SECRET_X:-http://x}"}}},
            "providers.openai.base_url",
        ),
        ("PUT", {"targets": [{"virtual_key": "openai", "model": "${SECRET_X}"}]}, "targets[0].model"),
        (
            "PUT",
            {"plugins": [{"name": "pii_redact", "config": {"x": ["${HOME}"]}}]},
            "plugins[0].config.x[0]",
        ),
        ("PUT", {"aliases": {"odd": "${not a var"}}, "aliases.odd"),
    ],
)
async def test_env_references_in_api_configs_are_refused_with_their_path(
    gateway_factory, fake_openai, method, document, field
):
    running = await gateway_factory(env=env_with_secrets(fake_openai.base_url))
    admin = Admin(running.admin_url, BOOT)
    before = await admin.ok("GET", "/admin/config")
    status, body = await admin.call(method, "/admin/config", document)
    assert status == 400, body
    message = body["error"]["message"]
    assert f"{field}: " in message and "not allowed in configs sent through the admin API" in message
    assert body["error"]["type"] == "invalid_request_error"
    assert (await admin.ok("GET", "/admin/config"))["version"] == before["version"]  # nothing applied
    assert_no_env_value(body, await everything_readable(running))


async def test_admin_env_allowlist_expands_only_the_listed_names(gateway_factory, fake_openai):
    env = env_with_secrets(fake_openai.base_url, {"FAST_MODEL": "gpt-4o-mini"})
    running = await gateway_factory({"admin_env_allowlist": ["FAST_MODEL"]}, env=env)
    admin = Admin(running.admin_url, BOOT)

    await admin.ok("PUT", "/admin/config", {"aliases": {"fast": "${FAST_MODEL}"}})
    models = orjson.loads(await raw_get(running, running.proxy_url + "/v1/models", key=None))
    assert {"fast": "gpt-4o-mini"}.items() <= {m["id"]: m.get("alias_of") for m in models["data"]}.items()
    # The stored version keeps the reference as written.
    assert (await admin.ok("GET", "/admin/config"))["config"]["aliases"]["fast"] == "${FAST_MODEL}"

    for document, field in (
        ({"aliases": {"leak": "${SECRET_X}"}}, "aliases.leak"),
        ({"aliases": {"mixed": "${FAST_MODEL}${SECRET_X}"}}, "aliases.mixed"),
        ({"aliases": {"home": "${HOME:-x}"}}, "aliases.home"),
    ):
        status, body = await admin.call("PUT", "/admin/config", document)
        assert status == 400 and f"{field}: " in body["error"]["message"], body
    status, body = await admin.call(
        "PUT", "/admin/config", {"admin_env_allowlist": ["FAST_MODEL", "SECRET_X"]}
    )
    assert status == 400 and "admin_env_allowlist" in body["error"]["message"]
    assert_no_env_value(await everything_readable(running))


async def test_errors_quote_the_reference_never_the_expanded_value(gateway_factory, fake_openai, tmp_path):
    env = env_with_secrets(fake_openai.base_url, {"MODE": SECRET})
    running = await gateway_factory({"admin_env_allowlist": ["MODE", "HOME"]}, env=env)
    admin = Admin(running.admin_url, BOOT)
    status, body = await admin.call(
        "PUT", "/admin/config", {"strategy": {"mode": "${MODE}"}, "request_timeout": "${HOME}"}
    )
    assert status == 400
    message = body["error"]["message"]
    assert "strategy.mode" in message and "'${MODE}'" in message and "request_timeout" in message
    assert_no_env_value(body)

    # The same holds for the operator's file, whose errors reach logs and `validate`.
    path = tmp_path / "bad.yaml"
    path.write_text('strategy:\n  mode: "${MODE}"\nrequest_timeout: "t-${HOME}"\n')
    with pytest.raises(ConfigError) as err:
        load_config(path, env)
    assert "'${MODE}'" in str(err.value) and "'t-${HOME}'" in str(err.value)
    assert_no_env_value(str(err.value))


async def test_the_operators_own_references_survive_patches_and_rollbacks(
    gateway_factory, fake_openai, tmp_path
):
    env = env_with_secrets(fake_openai.base_url, {"FAST": "gpt-4o-mini"})
    upstream_key = env["OPENAI_API_KEY"]
    path = tmp_path / "ferro.yaml"
    path.write_text(
        "providers:\n  openai:\n    api_key: ${OPENAI_API_KEY}\n    base_url: ${OPENAI_BASE_URL}\n"
        "aliases:\n  fast: ${FAST}\n"
    )
    running = await gateway_factory(load_config(path, env), env=env, config_source=str(path))
    admin = Admin(running.admin_url, BOOT)
    first = (await admin.ok("GET", "/admin/config"))["version"]

    # A merge patch keeps the file's references where they are, and they still expand.
    patched = await admin.ok("PUT", "/admin/config", {"aliases": {"smart": "gpt-4o"}})
    assert patched["config"]["aliases"]["fast"] == "${FAST}"
    assert await chat(running, None) == 200
    assert fake_openai.requests[-1].headers["Authorization"] == f"Bearer {upstream_key}"
    # Moving the provider key's reference to a published place is not the operator's reference.
    status, body = await admin.call("PUT", "/admin/config", {"aliases": {"leak": "${OPENAI_API_KEY}"}})
    assert status == 400 and "aliases.leak" in body["error"]["message"]
    # GET, edit, send back: the references (and the [REDACTED] secrets) are kept.
    current = (await admin.ok("GET", "/admin/config"))["config"]
    current["aliases"]["smarter"] = "gpt-4o"
    await admin.ok("POST", "/admin/config", current)
    assert await chat(running, None) == 200
    # Rolling back to the file's version applies it as the file did.
    rolled = await admin.ok("POST", f"/admin/config/rollback/{first}")
    assert rolled["rolled_back_from"] == first and "smart" not in rolled["config"]["aliases"]
    assert await chat(running, None) == 200
    readable = await everything_readable(running)
    assert_no_env_value(readable)
    assert upstream_key not in readable


async def test_a_stored_api_version_stays_literal_when_rolled_back_to(gateway_factory, fake_openai):
    running = await gateway_factory(env=env_with_secrets(fake_openai.base_url))
    admin = Admin(running.admin_url, BOOT)
    # A version stored by the API before this check existed.
    store = running.gateway.services["configs"]
    old = await store.add({"aliases": {"leak": "${SECRET_X}"}}, "key:old", "admin-api")
    status, body = await admin.call("POST", f"/admin/config/rollback/{old.version}")
    assert status == 400 and "aliases.leak" in body["error"]["message"], body
    assert_no_env_value(body, await raw_get(running, running.proxy_url + "/v1/models", key=None))


# ---------------------------------------------------------------- key fields


BAD_KEY_BODIES: list[tuple[dict[str, Any], str]] = [
    ({"expires_at": 1735689600000}, "expires_at"),  # milliseconds
    ({"expires_at": "1735689600000"}, "expires_at"),
    ({"expires_at": -1}, "expires_at"),
    ({"expires_at": "garbage"}, "expires_at"),
    ({"expires_at": "nan"}, "expires_at"),
    ({"expires_at": "10000-01-01T00:00:00Z"}, "expires_at"),
    ({"expires_at": "1960-01-01T00:00:00Z"}, "expires_at"),
    ({"expires_at": ["2030-01-01T00:00:00Z"]}, "expires_at"),
    ({"expires_in": -5}, "expires_in"),
    ({"expires_in": 1e300}, "expires_in"),
    ({"expires_in": "3600"}, "expires_in"),
    ({"rpm_limit": 10**15}, "rpm_limit"),
    ({"rpm_limit": -1}, "rpm_limit"),
    ({"rpm_limit": 1.5}, "rpm_limit"),
    ({"rpm_limit": True}, "rpm_limit"),
    ({"tpm_limit": 2**63}, "tpm_limit"),
    ({"budget_usd": -0.01}, "budget_usd"),
    ({"budget_usd": 1e300}, "budget_usd"),
    ({"budget_usd": "10"}, "budget_usd"),
    ({"allowed_models": "gpt-4o"}, "allowed_models"),
    ({"allowed_models": [1, 2]}, "allowed_models"),
    ({"allowed_models": ["m" * 300]}, "allowed_models"),
    ({"scopes": []}, "scopes"),
    ({"scopes": ["root"]}, "scopes"),
    ({"scopes": "admin"}, "scopes"),
    ({"name": ""}, "name"),
    ({"name": "n" * 201}, "name"),
    ({"name": "two\nlines"}, "name"),
    ({"name": 5}, "name"),
]


async def test_bad_key_fields_are_refused_and_nothing_is_stored(gateway_factory, fake_openai, store_env):
    running = await gateway_factory(env={**admin_env(fake_openai.base_url), **store_env})
    admin = Admin(running.admin_url, BOOT)
    kept = await admin.create_key("kept", ["read_only"])
    listed = await admin.ok("GET", "/admin/keys")
    for fields, param in BAD_KEY_BODIES:
        body = {"name": "app", "scopes": ["proxy"], **fields}
        status, answer = await admin.call("POST", "/admin/keys", body)
        assert status == 400, (fields, status, answer)
        assert answer["error"]["type"] == "invalid_request_error" and answer["error"]["param"] == param
        assert param in answer["error"]["message"]
        status, answer = await admin.call("PUT", f"/admin/keys/{kept['id']}", fields)
        assert status == 400 and answer["error"]["param"] == param, (fields, answer)
    status, after = await admin.call("GET", "/admin/keys")
    assert status == 200 and after == listed  # nothing created, nothing changed
    assert await chat(running, None) == 200  # no proxy key was stored: keyless clients still pass


async def test_times_as_rfc3339_or_epoch_seconds_are_accepted(gateway_factory, fake_openai):
    running = await gateway_factory(env=admin_env(fake_openai.base_url))
    admin = Admin(running.admin_url, BOOT)
    by_iso = await admin.create_key("a", ["read_only"], expires_at="2030-01-01T00:00:00Z")
    by_epoch = await admin.create_key("b", ["read_only"], expires_at=1893456000)
    by_text = await admin.create_key("c", ["read_only"], expires_at="1893456000.5")
    assert by_iso["expires_at"] == by_epoch["expires_at"] == "2030-01-01T00:00:00.000Z"
    assert by_text["expires_at"] == "2030-01-01T00:00:00.500Z"
    last = await admin.create_key("d", ["read_only"], expires_at="9999-12-31T23:59:59Z", rpm_limit=10**12)
    assert last["expires_at"].startswith("9999-12-31") and last["rpm_limit"] == 10**12


# ---------------------------------------------------------------- query params and ids


@pytest.mark.parametrize(
    ("path", "param"),
    [
        ("/admin/logs?limit=abc", "limit"),
        ("/admin/logs?offset=-1", "offset"),
        ("/admin/logs?offset=99999999999999999999", "offset"),
        ("/admin/logs?since=1735689600000", "since"),
        ("/admin/logs?until=-5", "until"),
        ("/admin/logs?since=nan", "since"),
        ("/admin/logs?since=10000-01-01T00:00:00Z", "since"),
        ("/admin/logs?status=99999999999999999999", "status"),
        ("/admin/logs/stats?bucket=nan", "bucket"),
        ("/admin/logs/stats?bucket=inf", "bucket"),
        ("/admin/audit?offset=99999999999999999999", "offset"),
        ("/admin/config/history?offset=99999999999999999999", "offset"),
        ("/admin/keys/usage?offset=1e3", "offset"),
    ],
)
async def test_bad_query_parameters_are_400_naming_them(gateway_factory, fake_openai, tmp_path, path, param):
    env = {**admin_env(fake_openai.base_url), **env_for("sqlite", str(tmp_path / "state.db"))}
    running = await gateway_factory(env=env)
    status, body = await Admin(running.admin_url, BOOT).call("GET", path)
    assert status == 400, body
    assert body["error"]["param"] == param and param in body["error"]["message"]


@pytest.mark.parametrize("version", ["99999999999999999999", "%C2%B2", "0", "-1", "1.0"])
async def test_bad_version_ids_are_400(gateway_factory, fake_openai, tmp_path, version):
    env = {**admin_env(fake_openai.base_url), **env_for("sqlite", str(tmp_path / "state.db"))}
    running = await gateway_factory(env=env)
    status, body = await Admin(running.admin_url, BOOT).call("POST", f"/admin/config/rollback/{version}")
    assert status == 400 and body["error"]["param"] == "version", body


# ---------------------------------------------------------------- undecodable stored rows


def corrupt_sqlite(db: Path, bad_token: str) -> None:
    con = sqlite3.connect(db)
    with con:
        con.execute(
            "INSERT INTO ferro_keys (id, name, key_hash, prefix, scopes, created_at, expires_at)"
            " VALUES ('key_corrupt1', 'SECRETname-broken', ?, 'sk-ferro-xx', 'not json', 'garbage', 1735689600000)",
            (hash_token(bad_token),),
        )
        con.execute(
            "INSERT INTO ferro_keys (id, name, key_hash, prefix, scopes, created_at)"
            " VALUES ('key_corrupt2', 'n', 'h2', 'p', '[\"proxy\"]', 1e300)"
        )
        con.execute(
            "INSERT INTO ferro_config_versions (document, actor, source, created_at, digest)"
            " VALUES ('{not json', 'x', 'admin-api', 1.0, 'd')"
        )
        con.execute(
            "INSERT INTO ferro_audit (ts, actor, action, target, detail) VALUES ('later', 'x', 'a', 't', '{}')"
        )
        con.execute(
            "INSERT INTO ferro_request_logs (id, ts, status, prompt_tokens) VALUES ('r1', 'yesterday', 'ok', 'x')"
        )
    con.close()


async def test_an_undecodable_stored_row_is_skipped_with_a_warning(
    gateway_factory, fake_openai, tmp_path, caplog
):
    db = tmp_path / "state.db"
    env = {**admin_env(fake_openai.base_url), **env_for("sqlite", str(db))}
    running = await gateway_factory(env=env)
    admin = Admin(running.admin_url, BOOT)
    good = await admin.create_key("good", ["proxy"])
    await admin.ok("PUT", "/admin/config", {"aliases": {"fast": "gpt-4o-mini"}})
    bad_token = "sk-ferro-" + "b" * 43
    corrupt_sqlite(db, bad_token)

    with caplog.at_level(logging.WARNING, logger="ferro_proxy.stores"):
        status, keys = await admin.call("GET", "/admin/keys")
        assert status == 200 and [k["id"] for k in keys["data"]] == [good["id"]]
        assert (await admin.call("GET", f"/admin/keys/{good['id']}"))[0] == 200
        assert (await admin.call("GET", "/admin/keys/key_corrupt1"))[0] == 404
        assert (await admin.call("GET", "/admin/keys/usage"))[0] == 200
        assert (await admin.call("GET", "/admin/dashboard"))[0] == 200
        status, history = await admin.call("GET", "/admin/config/history")
        assert status == 200 and history["data"]
        assert (await admin.call("GET", "/admin/audit"))[0] == 200
        status, logs = await admin.call("GET", "/admin/logs")
        assert status == 200 and all(row["id"] != "r1" for row in logs["data"])
        assert (await admin.call("GET", "/admin/logs/stats"))[0] == 200

        assert await chat(running, good["key"]) == 200
        assert await chat(running, bad_token) == 401  # the corrupt row's key: refused, not a 500
        assert await chat(running, None) == 401  # a valid proxy key exists, so /v1 needs one

    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("key_corrupt1" in w and "scopes" in w for w in warnings), warnings
    assert any("key_corrupt2" in w and "created_at" in w for w in warnings), warnings
    assert not any("SECRETname" in w or hash_token(bad_token) in w for w in warnings)


@pytest.mark.parametrize(
    ("document", "field"),
    [
        ({"model_catalog": "/etc/passwd"}, "model_catalog"),
        ({"fetch": {"allow_private": True}}, "fetch"),
        ({"intercept": {"passthrough_allow_private": True}}, "intercept"),
        ({"server": {"proxy": {"max_connections": 1}}}, "server"),
        ({"providers": {"openai": {"base_url": "http://127.0.0.1:9/v1"}}}, "providers.openai.base_url"),
    ],
)
async def test_what_only_the_file_may_change_is_refused_from_the_api(
    gateway_factory, fake_openai, document, field
):
    running = await gateway_factory(env=env_with_secrets(fake_openai.base_url))
    admin = Admin(running.admin_url, BOOT)
    before = await admin.ok("GET", "/admin/config")
    status, body = await admin.call("POST", "/admin/config", document)
    assert status == 400, body
    assert f"{field}: " in body["error"]["message"]
    assert (await admin.ok("GET", "/admin/config"))["version"] == before["version"]


async def test_a_new_base_url_with_its_own_key_is_accepted(gateway_factory, fake_openai):
    running = await gateway_factory(env=env_with_secrets(fake_openai.base_url))
    admin = Admin(running.admin_url, BOOT)
    document = {
        "providers": {"openai": {"base_url": fake_openai.base_url, "api_key": "sk-new-literal-key-0001"}}
    }
    status, body = await admin.call("POST", "/admin/config", document)
    assert status in (200, 201), body
