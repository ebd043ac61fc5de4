"""The request-logger filter: structured lines, persisted rows through the batch writer,
body logging with scrubbing, drops when the queue is full or the database is gone, and
the flush on shutdown."""

from __future__ import annotations

import logging

import asyncpg
import openai
import pytest

from ferro_proxy.stores.base import LogQuery
from ferro_proxy.stores.hub import StoreHub
from tests import test_stores_backends as backends
from tests.test_admin import BOOT, Admin, admin_env


def logger_plugin(**config) -> dict:
    return {"plugins": [{"name": "request-logger", "type": "logging", "config": config}]}


def sdk(running, key: str = "sk-placeholder") -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(api_key=key, base_url=running.proxy_url + "/v1", max_retries=0)


async def drain(running) -> None:
    """Write what the logger holds now instead of waiting for its next batch."""
    from filters.request_logger import RequestLogger

    for f in running.gateway.runtime.chain.filters:
        if isinstance(f, RequestLogger) and f.writer is not None:
            await f.writer.close()


async def metrics_text(running) -> str:
    return running.gateway.metrics.render().decode()


async def test_rows_lines_and_stats_for_plain_streamed_and_failed_requests(
    gateway_factory, fake_openai, caplog
):
    caplog.set_level(logging.INFO, logger="ferro_proxy.request_log")
    running = await gateway_factory(
        logger_plugin(persist=True, flush_interval="10ms"), env=admin_env(fake_openai.base_url)
    )
    admin = Admin(running.admin_url, BOOT)
    key = await admin.create_key("app", ["proxy"])
    client = sdk(running, key["key"])
    await client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
    stream = await client.chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}], stream=True
    )
    async for _ in stream:
        pass
    fake_openai.script.append({"status": 500})
    with pytest.raises(openai.APIStatusError):
        await client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "x"}])

    await drain(running)
    logs = await admin.ok("GET", "/admin/logs?limit=10")
    rows = logs["data"]
    assert logs["summary"]["total_entries"] == 3
    failed, streamed, plain = rows
    assert plain["status"] == 200 and plain["key_id"] == key["id"] and plain["provider"] == "openai"
    assert plain["prompt_tokens"] == 12 and plain["completion_tokens"] == 7 and plain["total_tokens"] == 19
    assert plain["latency_ms"] > 0 and plain["stream"] is False and plain["request_body"] is None
    assert streamed["stream"] is True and streamed["ttft_ms"] is not None and streamed["total_tokens"] == 19
    assert failed["status"] == 502 and "fake failure 500" in failed["error"]
    assert failed["provider"] == "openai"  # the upstream that failed, though none answered
    assert (await admin.ok("GET", f"/admin/logs?status=5xx&key={key['id']}"))["summary"]["total_entries"] == 1

    stats = await admin.ok("GET", "/admin/logs/stats?since=1h")
    assert stats["total_requests"] == 3 and stats["errors"] == 1 and stats["tokens"]["total"] == 38
    assert stats["by_model"][0]["model"] == "gpt-4o-mini" and stats["latency_ms"]["p99"] is not None
    assert sum(p["requests"] for p in stats["series"]["points"]) == 3

    lines = [r for r in caplog.records if r.name == "ferro_proxy.request_log" and r.getMessage() == "request"]
    assert len(lines) == 3 and {r.fields["status"] for r in lines} == {200, 502}
    assert all(r.fields["request_id"] and "ts" not in r.fields for r in lines)  # the formatter's ts stays
    everything = " ".join(str(getattr(r, "fields", "")) + r.getMessage() for r in caplog.records)
    assert key["key"] not in everything and "sk-test-upstream-key" not in everything


async def test_bodies_only_when_asked_and_scrubbed(gateway_factory, fake_openai):
    running = await gateway_factory(
        logger_plugin(persist=True, log_bodies=True, flush_interval="10ms"),
        env=admin_env(fake_openai.base_url),
    )
    client = sdk(running)
    await client.chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "my key is sk-abcdefghijklmnop1234"}]
    )
    stream = await client.chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "again"}], stream=True
    )
    async for _ in stream:
        pass
    await drain(running)
    streamed, plain = (await Admin(running.admin_url, BOOT).ok("GET", "/admin/logs"))["data"]
    assert "sk-abcdefghijklmnop1234" not in plain["request_body"] and "[REDACTED]" in plain["request_body"]
    assert fake_openai.reply_text in plain["response_body"]
    assert streamed["response_body"] == fake_openai.reply_text


async def test_a_full_queue_drops_and_counts_and_shutdown_flushes(gateway_factory, fake_openai, tmp_path):
    db = str(tmp_path / "logs.db")
    env = {
        **admin_env(fake_openai.base_url),
        "REQUEST_LOG_STORE_BACKEND": "sqlite",
        "REQUEST_LOG_STORE_DSN": db,
    }
    running = await gateway_factory(logger_plugin(persist=True, queue_size=1, flush_interval="60s"), env=env)
    client = sdk(running)
    for _ in range(4):  # the writer holds one row while it waits, the queue one more: two dropped
        await client.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}]
        )
    text = await metrics_text(running)
    assert 'ferro_log_rows_dropped_total{reason="queue_full"} 2.0' in text
    await running.drain_and_stop(0.1)  # flushes the held and queued rows
    hub = await StoreHub(env).open()
    try:
        assert (await hub.logs.query(LogQuery()))[1] == 2
    finally:
        await hub.close()


async def test_a_dead_database_never_fails_requests(gateway_factory, fake_openai):
    await backends.require_postgres()
    schema, dsn = await backends.new_pg_schema()
    try:
        env = {
            **admin_env(fake_openai.base_url),
            "REQUEST_LOG_STORE_BACKEND": "postgres",
            "REQUEST_LOG_STORE_DSN": dsn,
        }
        running = await gateway_factory(logger_plugin(persist=True, flush_interval="10ms"), env=env)
        conn = await asyncpg.connect(dsn)
        await conn.execute("DROP TABLE ferro_request_logs")  # the database loses the table under us
        await conn.close()
        client = sdk(running)
        for _ in range(3):
            resp = await client.chat.completions.create(
                model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}]
            )
            assert resp.choices[0].message.content == fake_openai.reply_text
        await drain(running)
        assert 'ferro_log_rows_dropped_total{reason="write_error"} 3.0' in await metrics_text(running)
    finally:
        await backends.drop_pg_schema(schema)


async def test_the_filters_own_backend_feeds_the_admin_api(gateway_factory, fake_openai, tmp_path):
    db = str(tmp_path / "own.db")
    running = await gateway_factory(
        logger_plugin(persist=True, backend="sqlite", dsn=db, flush_interval="10ms"),
        env=admin_env(fake_openai.base_url),
    )
    await sdk(running).chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}]
    )
    await drain(running)
    logs = await Admin(running.admin_url, BOOT).ok("GET", "/admin/logs")
    assert logs["summary"]["total_entries"] == 1


async def test_config_errors_name_the_field(gateway_factory, fake_openai):
    from ferro_proxy.config import ConfigError

    with pytest.raises(ConfigError) as err:
        await gateway_factory(
            logger_plugin(persist=True, backend="sqlite"), env=admin_env(fake_openai.base_url)
        )
    assert "plugins[0].config: dsn: required with backend 'sqlite'" in err.value.errors
    with pytest.raises(ConfigError) as err:
        await gateway_factory(logger_plugin(level="loud"), env=admin_env(fake_openai.base_url))
    assert any(e.startswith("plugins[0].config.level") for e in err.value.errors)
