"""The store contract, run against memory, SQLite and Postgres (real servers, fresh schema)."""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path

import pytest

from ferro_proxy.stores.base import LogQuery
from ferro_proxy.stores.hub import StoreHub
from ferro_proxy.stores.log_stats import compute_stats
from ferro_proxy.stores.records import hash_token, mint_key
from tests import test_stores_backends as backends

# The per-backend fixtures live beside the backend tests; pytest finds them by name here.
store_env = backends.store_env
persistent_env = backends.persistent_env
hub = backends.hub


def log_row(i: int, **kw) -> dict:
    row = {
        "id": f"req-{i}",
        "ts": 1_700_000_000.0 + i,
        "finished_at": 1_700_000_000.5 + i,
        "key_id": "key_a" if i % 2 else "key_b",
        "endpoint": "chat",
        "provider": "openai",
        "model": "gpt-4o-mini",
        "status": 200,
        "stream": False,
        "prompt_tokens": 10,
        "completion_tokens": 5,
        "total_tokens": 15,
        "cost_usd": 0.001,
        "latency_ms": float(10 * (i + 1)),
        "ttft_ms": None,
        "error": None,
        "cache_hit": False,
        "guardrail_hits": None,
        "request_body": None,
        "response_body": None,
    }
    row.update(kw)
    return row


async def test_keys_round_trip_and_only_the_hash_is_kept(hub: StoreHub):
    keys = hub.keys
    record, token = mint_key("ci", ["proxy"], allowed_models=["gpt-4o*"], rpm_limit=60, budget_usd=5.0)
    await keys.create(record)
    assert token.startswith("sk-ferro-") and token not in repr(await keys.list())
    found = await keys.get_by_hash(hash_token(token))
    assert found is not None and found.id == record.id and found.name == "ci"
    assert found.allowed_models == ["gpt-4o*"] and found.rpm_limit == 60 and found.budget_usd == 5.0
    assert await keys.get_by_hash(hash_token(token + "x")) is None

    found.name, found.scopes, found.revoked_at = "ci-renamed", ["proxy", "read_only"], time.time()
    await keys.update(found)
    again = await keys.get(record.id)
    assert again is not None and again.name == "ci-renamed" and again.status() == "revoked"
    assert again.scopes == ["proxy", "read_only"]

    await keys.add_usage({record.id: (3, 1_800_000_000.0)})
    await keys.add_usage({record.id: (2, 1_700_000_000.0)})  # older timestamp: last_used stays
    used = await keys.get(record.id)
    assert used is not None and used.usage_count == 5 and used.last_used_at == 1_800_000_000.0

    assert await keys.delete(record.id) is True
    assert await keys.delete(record.id) is False
    assert await keys.get(record.id) is None


async def test_expired_keys_are_not_active(hub: StoreHub):
    record, _ = mint_key("old", ["admin"], expires_at=time.time() - 1)
    await hub.keys.create(record)
    stored = await hub.keys.get(record.id)
    assert stored is not None and stored.status() == "expired" and not stored.active
    assert await hub.keys.has_active_scope("admin", time.time()) is False


async def test_config_versions_are_numbered_and_listed_newest_first(hub: StoreHub):
    configs = hub.configs
    assert await configs.latest() is None
    v1 = await configs.add({"aliases": {"fast": "gpt-4o-mini"}}, "startup", "config.yaml")
    v2 = await configs.add({"aliases": {}}, "admin:ops", "api")
    v3 = await configs.add(v1.document, "admin:ops", "api", rolled_back_from=v1.version)
    assert v1.version < v2.version < v3.version
    latest = await configs.latest()
    assert latest is not None and latest.version == v3.version and latest.rolled_back_from == v1.version
    assert latest.digest == v1.digest != v2.digest
    got = await configs.get(v2.version)
    assert got is not None and got.actor == "admin:ops" and got.document == {"aliases": {}}
    page, total = await configs.history(limit=2)
    assert total == 3 and [v.version for v in page] == [v3.version, v2.version]
    assert await configs.get(9999) is None


async def test_audit_entries_filter_by_action_prefix(hub: StoreHub):
    await hub.audit.add("admin:ops", "key.create", "key_1", {"name": "ci"})
    await hub.audit.add("admin:ops", "config.set", "config", {"version": 2})
    await hub.audit.add("bootstrap-admin", "key.revoke", "key_1", {})
    entries, total = await hub.audit.list()
    assert total == 3 and [e.action for e in entries] == ["key.revoke", "config.set", "key.create"]
    keys_only, n = await hub.audit.list(action="key.")
    assert n == 2 and {e.target for e in keys_only} == {"key_1"}
    assert keys_only[-1].detail == {"name": "ci"}


async def test_request_logs_filter_page_delete_and_stats(hub: StoreHub):
    logs = hub.logs
    rows = [log_row(i) for i in range(10)]
    rows.append(log_row(10, status=502, provider="groq", model="llama", error="upstream_error"))
    rows.append(log_row(11, guardrail_hits=["pii-redact"], cache_hit=True))
    await logs.insert_many(rows)

    page, total = await logs.query(LogQuery(limit=3))
    assert total == 12 and [r["id"] for r in page] == ["req-11", "req-10", "req-9"]
    assert page[0]["guardrail_hits"] == ["pii-redact"] and page[0]["cache_hit"]
    assert (await logs.query(LogQuery(provider="groq")))[1] == 1
    assert (await logs.query(LogQuery(status="5xx")))[0][0]["error"] == "upstream_error"
    assert (await logs.query(LogQuery(status="ok")))[1] == 11
    assert (await logs.query(LogQuery(key_id="key_a")))[1] == 6
    window = LogQuery(since=1_700_000_002.0, until=1_700_000_004.0)
    assert (await logs.query(window))[1] == 3

    stats = await compute_stats(logs, LogQuery(since=1_700_000_000.0, until=1_700_000_012.0), bucket=6)
    assert stats["total_requests"] == 12 and stats["errors"] == 1
    assert stats["error_rate"] == round(1 / 12, 4)
    assert stats["tokens"]["total"] == 180
    assert stats["latency_ms"]["p50"] == 60.0 and stats["latency_ms"]["p99"] == 120.0
    assert {g["provider"]: g["requests"] for g in stats["by_provider"]} == {"openai": 11, "groq": 1}
    assert [p["requests"] for p in stats["series"]["points"]] == [6, 6]

    assert await logs.delete(LogQuery(until=1_700_000_004.5)) == 5
    assert (await logs.query(LogQuery()))[1] == 7
    with pytest.raises(ValueError):
        LogQuery(status="teapot").status_range()


async def test_keys_config_and_logs_survive_a_restart(persistent_env: dict[str, str]):
    env = persistent_env
    first = await StoreHub(env).open()
    record, token = mint_key("persisted", ["proxy"])
    await first.keys.create(record)
    await first.configs.add({"request_timeout": 30}, "startup", "file")
    await first.logs.insert_many([log_row(1)])
    await first.close()

    second = await StoreHub(env).open()  # migrations run again: a no-op
    try:
        found = await second.keys.get_by_hash(hash_token(token))
        assert found is not None and found.name == "persisted"
        latest = await second.configs.latest()
        assert latest is not None and latest.document == {"request_timeout": 30}
        assert (await second.logs.query(LogQuery()))[1] == 1
    finally:
        await second.close()


async def test_two_pools_migrating_and_writing_at_once(persistent_env: dict[str, str]):
    env = persistent_env
    hubs = await asyncio.gather(StoreHub(env).open(), StoreHub(env).open())
    try:

        async def write(h: StoreHub, tag: str) -> None:
            for i in range(20):
                await h.logs.insert_many([log_row(i, id=f"{tag}-{i}")])
                if i % 5 == 0:
                    await h.keys.create(mint_key(f"{tag}-{i}", ["proxy"])[0])
                    await h.configs.add({"n": i, "tag": tag}, tag, "api")

        await asyncio.gather(write(hubs[0], "a"), write(hubs[1], "b"))
        assert (await hubs[0].logs.query(LogQuery()))[1] == 40
        assert len(await hubs[1].keys.list()) == 8
        versions, total = await hubs[0].configs.history(limit=100)
        assert total == 8 and len({v.version for v in versions}) == 8
    finally:
        for h in hubs:
            await h.close()


ROOT = str(Path(__file__).resolve().parent.parent)
WRITER = """
import asyncio, sys
from ferro_proxy.stores.hub import StoreHub
from ferro_proxy.stores.records import mint_key

async def main():
    env = dict(arg.split("=", 1) for arg in sys.argv[2:])
    hub = await StoreHub(env).open()
    rows = [dict(id=f"{sys.argv[1]}-{i}", ts=1.0 + i, status=200) for i in range(50)]
    for i in range(0, 50, 10):
        await hub.logs.insert_many(rows[i:i + 10])
    await hub.keys.create(mint_key(sys.argv[1], ["proxy"])[0])
    await hub.configs.add({"writer": sys.argv[1]}, sys.argv[1], "process")
    await hub.close()

asyncio.run(main())
"""


async def test_two_processes_on_one_database(persistent_env: dict[str, str]):
    """Two separate processes migrate the same fresh database and write to it at once."""
    env = persistent_env
    args = [f"{k}={v}" for k, v in env.items()]
    root = ROOT
    procs = [
        await asyncio.create_subprocess_exec(
            sys.executable, "-c", WRITER, name, *args, cwd=root, stderr=asyncio.subprocess.PIPE
        )
        for name in ("p1", "p2")
    ]
    for proc in procs:
        _, err = await proc.communicate()
        assert proc.returncode == 0, err.decode()[-2000:]
    check = await StoreHub(env).open()
    try:
        assert (await check.logs.query(LogQuery()))[1] == 100
        assert sorted(k.name for k in await check.keys.list()) == ["p1", "p2"]
        assert (await check.configs.history())[1] == 2
        backend = env["API_KEY_STORE_BACKEND"]
        db = next(iter(check._databases.values()))
        applied = await db.fetchall("SELECT component, version FROM ferro_schema_migrations")
        assert sorted((r["component"], r["version"]) for r in applied) == [
            ("config", 1),
            ("keys", 1),
            ("request_logs", 1),
        ], backend
    finally:
        await check.close()
