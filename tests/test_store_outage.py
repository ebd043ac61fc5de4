"""The key store goes away mid-traffic (issue 15, item 3): keys validated before the outage
keep working for `auth.stale_grace`, keys that cannot be checked get 503 `auth_unavailable`
with Retry-After, keyless calls on a gateway without proxy keys are untouched, the admin API
answers a typed 503, and a key revoked meanwhile is refused once the store is back.

Postgres is cut with a loopback TCP forwarder the test controls (the server keeps running);
a SQLite file cannot be made unreachable under an open connection, so its connection is made
to raise what a failing disk gives (`sqlite3.OperationalError: disk I/O error`). A second
sidecar sharing the same store (reaching it directly) makes changes during the outage.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import openai
import pytest

from tests import test_stores_backends as backends
from tests.fakes.tcp_cut import CuttableForwarder
from tests.test_admin import BOOT, Admin, admin_env

HI = [{"role": "user", "content": "hi"}]


class FailingConnection:
    """An aiosqlite connection whose statements fail like a dead disk while `down` is set."""

    def __init__(self, real: Any) -> None:
        self.real = real
        self.down = False

    async def execute(self, *args: Any) -> Any:
        if self.down:
            raise sqlite3.OperationalError("disk I/O error")
        return await self.real.execute(*args)

    async def executemany(self, *args: Any) -> Any:
        if self.down:
            raise sqlite3.OperationalError("disk I/O error")
        return await self.real.executemany(*args)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)


class Outage:
    """`env` for the sidecar that loses its store, `direct_env` for one that keeps it."""

    def __init__(self, kind: str, env: dict[str, str], direct_env: dict[str, str]) -> None:
        self.kind = kind
        self.env = env
        self.direct_env = direct_env
        self.forwarder: CuttableForwarder | None = None
        self._failing: list[FailingConnection] = []

    def attach(self, running: Any) -> None:
        """For SQLite: put the fault switch between the sidecar and its file."""
        if self.kind != "sqlite":
            return
        for db in running.gateway.services["stores"]._databases.values():
            wrapper = FailingConnection(db._conn)
            db._conn = wrapper
            self._failing.append(wrapper)

    async def cut(self) -> None:
        if self.forwarder is not None:
            await self.forwarder.cut()
        for wrapper in self._failing:
            wrapper.down = True

    async def restore(self) -> None:
        if self.forwarder is not None:
            await self.forwarder.restore()
        for wrapper in self._failing:
            wrapper.down = False


@pytest.fixture(params=["sqlite", "postgres"])
async def outage(request, tmp_path: Path) -> AsyncIterator[Outage]:
    if request.param == "sqlite":
        env = backends.env_for("sqlite", str(tmp_path / "state.db"))
        yield Outage("sqlite", env, env)
        return
    await backends.require_postgres()
    schema, dsn = await backends.new_pg_schema()
    forwarder = await CuttableForwarder("127.0.0.1", 5432).start()
    via = dsn.replace("127.0.0.1:5432", f"127.0.0.1:{forwarder.port}")
    result = Outage("postgres", backends.env_for("postgres", via), backends.env_for("postgres", dsn))
    result.forwarder = forwarder
    try:
        yield result
    finally:
        await forwarder.stop()
        await backends.drop_pg_schema(schema)


def client(running: Any, key: str) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(api_key=key, base_url=running.proxy_url + "/v1", max_retries=0)


async def chat(running: Any, key: str) -> str:
    async with client(running, key) as c:
        resp = await c.chat.completions.create(model="gpt-4o-mini", messages=HI)
    return resp.choices[0].message.content or ""


async def refused(running: Any, key: str) -> openai.APIStatusError:
    with pytest.raises(openai.APIStatusError) as info:
        await chat(running, key)
    return info.value


async def get_json(url: str) -> tuple[int, Any, str]:
    async with aiohttp.ClientSession() as session, session.get(url) as resp:
        text = await resp.text()
        return resp.status, await resp.json(content_type=None) if "json" in resp.content_type else None, text


async def metric(running: Any, line_start: str) -> float:
    _, _, text = await get_json(running.admin_url + "/metrics")
    for line in text.splitlines():
        if line.startswith(line_start):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"no metric {line_start!r}")


async def sidecars(gateway_factory, fake, outage: Outage, auth: dict[str, Any]) -> tuple[Any, Any]:
    """(the sidecar whose store will fail, a second one on the same store that keeps it)."""
    config = {"auth": auth, "plugins": [{"name": "request-logger", "config": {"persist": True}}]}
    victim = await gateway_factory(
        config, env={**admin_env(fake.base_url), **outage.env, "API_KEY_CACHE_SECONDS": "0.2"}
    )
    outage.attach(victim)
    ops = await gateway_factory(env={**admin_env(fake.base_url), **outage.direct_env})
    return victim, ops


async def test_known_keys_ride_out_an_outage_unknown_ones_get_503(
    gateway_factory, fake_openai, outage, caplog
):
    victim, ops = await sidecars(gateway_factory, fake_openai, outage, {"stale_grace": "3s"})
    admin = Admin(ops.admin_url, BOOT)
    known = await admin.create_key("known", ["proxy"])
    doomed = await admin.create_key("doomed", ["proxy"])
    unseen = await admin.create_key("unseen", ["proxy"])
    await chat(victim, known["key"])
    await chat(victim, doomed["key"])
    validated = time.monotonic()

    with caplog.at_level(logging.INFO):
        await outage.cut()
        await asyncio.sleep(0.3)  # past the 0.2 s validation cache
        for _ in range(3):  # validated just before: served from the grace, the logger fails open
            assert await chat(victim, known["key"]) == fake_openai.reply_text
        assert await chat(victim, doomed["key"]) == fake_openai.reply_text

        for token in (unseen["key"], "sk-ferro-never-issued-0000000000000000"):
            err = await refused(victim, token)
            assert err.status_code == 503 and err.body["code"] == "auth_unavailable"
            assert err.body["type"] == "api_error" and int(err.response.headers["Retry-After"]) >= 1
        err = await refused(victim, "sk-my-own-provider-key")  # keyless: proxy keys are known to exist
        assert err.status_code == 401 and err.body["code"] == "missing_api_key"

        status, body = await Admin(victim.admin_url, BOOT).call("GET", "/admin/keys")
        assert status == 503 and body["error"]["code"] == "store_unavailable"
        assert body["error"]["type"] == "api_error"
        status, body = await Admin(victim.admin_url, BOOT).call("POST", "/admin/keys", {"name": "x"})
        assert status == 503 and body["error"]["code"] == "store_unavailable"

        _, health, text = await get_json(victim.admin_url + "/health")
        assert health["status"] == "degraded"
        assert health["store_status"]["keys"]["status"] == "down"
        assert health["store_status"]["keys"]["error"] == "unreachable" or outage.kind == "sqlite"
        for detail in ("OperationalError", "ConnectionRefused", "disk I/O", "Connect call failed"):
            assert detail not in text  # a category, never the driver's text
        assert await metric(victim, 'ferro_store_up{store="keys"}') == 0
        assert await metric(victim, "ferro_auth_stale_total") >= 4

        await admin.ok("POST", f"/admin/keys/{doomed['id']}/revoke")  # on the sidecar that has the store
        assert time.monotonic() - validated < 3, "the test ran too slowly for its grace window"
        await asyncio.sleep(max(0.0, validated + 3.2 - time.monotonic()))
        err = await refused(victim, known["key"])  # the grace is over: known keys wait too
        assert err.status_code == 503 and err.body["code"] == "auth_unavailable"

        await outage.restore()
        await _eventually(lambda: chat(victim, known["key"]))
        err = await refused(victim, doomed["key"])  # revoked meanwhile: refused as soon as it is back
        assert err.status_code == 401 and "revoked" in err.body["message"]
        assert await chat(victim, unseen["key"]) == fake_openai.reply_text
        assert await metric(victim, 'ferro_store_up{store="keys"}') == 1
        _, health, _ = await get_json(victim.admin_url + "/health")
        assert health["store_status"]["keys"] == {"backend": outage.kind, "status": "up"}

    lines = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    store_lines = [m for m in lines if "store (" in m and "unavailable" in m]
    auth_lines = [m for m in lines if "gateway keys cannot be checked" in m]
    assert len(store_lines) == 1 and len(auth_lines) == 1, lines  # throttled: one line each
    assert "keep working" in auth_lines[0]
    assert not any(str(outage.forwarder.port) in m for m in lines if outage.forwarder)
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR and r.name.startswith("ferro")]


async def _eventually(call, seconds: float = 5.0) -> None:
    deadline = time.monotonic() + seconds
    while True:
        try:
            await call()
            return
        except openai.APIStatusError:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.1)


async def test_keyless_calls_on_a_gateway_without_proxy_keys_are_untouched(
    gateway_factory, fake_openai, outage
):
    victim, _ = await sidecars(gateway_factory, fake_openai, outage, {})
    await asyncio.sleep(0.3)  # past the validation cache: the answer must come from memory
    await outage.cut()
    for _ in range(3):
        assert await chat(victim, "sk-my-own-provider-key") == fake_openai.reply_text
    async with client(victim, "sk-my-own-provider-key") as c:
        assert (await c.models.list()).data
    err = await refused(victim, "sk-ferro-never-issued-0000000000000000")  # a key is still checked
    assert err.status_code == 503 and err.body["code"] == "auth_unavailable"


async def test_grace_never_outlives_expires_at_and_zero_turns_it_off(gateway_factory, fake_openai, outage):
    victim, ops = await sidecars(gateway_factory, fake_openai, outage, {"stale_grace": "1m"})
    admin = Admin(ops.admin_url, BOOT)
    created = time.time()
    brief = await admin.create_key("brief", ["proxy"], expires_in=1.5)
    await chat(victim, brief["key"])
    await outage.cut()
    await asyncio.sleep(0.3)
    assert await chat(victim, brief["key"]) == fake_openai.reply_text  # from the grace
    await asyncio.sleep(max(0.0, created + 1.5 + 0.2 - time.time()))
    err = await refused(victim, brief["key"])
    assert err.status_code == 401 and "expired" in err.body["message"]

    await outage.restore()
    strict, ops = await sidecars(gateway_factory, fake_openai, outage, {"stale_grace": 0})
    key = await Admin(ops.admin_url, BOOT).create_key("strict", ["proxy"])
    await chat(strict, key["key"])
    await asyncio.sleep(0.3)
    await outage.cut()
    err = await refused(strict, key["key"])
    assert err.status_code == 503 and err.body["code"] == "auth_unavailable"


async def test_a_negative_grace_is_a_config_error():
    from ferro_proxy.config import ConfigError, config_from_data

    with pytest.raises(ConfigError, match=r"auth\.stale_grace: must be >= 0"):
        config_from_data({"auth": {"stale_grace": -1}}, env={})


async def test_rate_limit_with_redis_down_fails_closed_typed(gateway_factory, fake_openai):
    cfg = {
        "backend": "redis",
        "dsn": "redis://127.0.0.1:1/0",
        "limits": [{"scope": "global", "requests_per_minute": 100}],
        "fail_open": False,
    }
    env = {"OPENAI_API_KEY": "sk-test-upstream-key", "OPENAI_BASE_URL": fake_openai.base_url}
    gw = await gateway_factory({"plugins": [{"name": "rate-limit", "config": cfg}]}, env=env)
    err = await refused(gw, "sk-client")
    assert err.status_code == 503 and err.body["code"] == "rate_limit_unavailable"
    assert err.body["type"] == "api_error" and int(err.response.headers["Retry-After"]) >= 1
    assert not fake_openai.requests
