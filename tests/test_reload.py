"""Hot reload of the config file: edits, a Kubernetes ConfigMap `..data` symlink swap, bad
files kept out, and a request in flight finishing on the config it started with."""

from __future__ import annotations

import asyncio
import logging
import os
from pathlib import Path

import openai

from ferro_proxy.config import load_config
from tests.fakes.openai_upstream import FakeOpenAI
from tests.test_admin import BOOT, Admin, admin_env


def write(path: Path, text: str) -> None:
    """Write the way editors and tools do: a new file renamed over the old one."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


async def start_watched(gateway_factory, path: Path, env: dict[str, str], interval: str = "3600"):
    """A gateway started from `path`; with the default interval the test drives `check()`."""
    env = {**env, "FERRO_CONFIG_WATCH_INTERVAL": interval}
    running = await gateway_factory(load_config(path, env), env=env, config_source=str(path))
    return running, running.gateway.services["config_watcher"]


def reloads(running, result: str) -> float:
    value = running.gateway.metrics.registry.get_sample_value(
        "ferro_config_reloads_total", {"result": result}
    )
    return value or 0.0


async def test_an_edited_file_is_applied_and_versioned(gateway_factory, fake_openai, tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text("aliases:\n  fast: gpt-4o-mini\n")
    running, _ = await start_watched(gateway_factory, path, admin_env(fake_openai.base_url), interval="0.02")
    write(path, "aliases:\n  fast: gpt-4o\n  smart: gpt-4o\n")
    for _ in range(500):  # the background poll picks it up
        if running.gateway.config.aliases.get("smart"):
            break
        await asyncio.sleep(0.01)
    assert running.gateway.config.aliases == {"fast": "gpt-4o", "smart": "gpt-4o"}
    history = await Admin(running.admin_url, BOOT).ok("GET", "/admin/config/history")
    latest = history["data"][0]
    assert latest["actor"] == "file" and latest["source"] == str(path) and latest["version"] == 2
    assert latest["config"] == {"aliases": {"fast": "gpt-4o", "smart": "gpt-4o"}}
    assert reloads(running, "success") == 1


async def test_a_bad_file_keeps_the_running_config(gateway_factory, fake_openai, tmp_path, caplog):
    caplog.set_level(logging.ERROR, logger="ferro_proxy.reload")
    path = tmp_path / "config.yaml"
    path.write_text("aliases:\n  fast: gpt-4o-mini\n")
    running, watcher = await start_watched(gateway_factory, path, admin_env(fake_openai.base_url))
    for broken in (
        "aliases: [unclosed\n",  # not YAML
        "targets:\n  - weight: heavy\n",  # wrong types, missing field
        "plugins:\n  - name: no-such-plugin\n",  # fails when the chain is built
    ):
        write(path, broken)
        assert await watcher.check() is False
        assert running.gateway.config.aliases == {"fast": "gpt-4o-mini"}
    assert reloads(running, "error") == 3
    messages = [r.getMessage() for r in caplog.records if r.name == "ferro_proxy.reload"]
    assert len(messages) == 3 and all(str(path) in m for m in messages)
    assert "targets[0].virtual_key: required field missing" in messages[1]
    assert "unknown plugin 'no-such-plugin'" in messages[2]
    resp = await openai.AsyncOpenAI(
        api_key="x", base_url=running.proxy_url + "/v1", max_retries=0
    ).chat.completions.create(model="fast", messages=[{"role": "user", "content": "hi"}])
    assert resp.choices[0].message.content == fake_openai.reply_text
    write(path, "aliases:\n  fast: gpt-4o-mini\n  quick: gpt-4o-mini\n")  # fixed: applied
    assert await watcher.check() is True and "quick" in running.gateway.config.aliases


async def test_a_configmap_symlink_swap_is_seen(gateway_factory, fake_openai, tmp_path):
    """The kubelet's layout: config.yaml -> ..data/config.yaml, ..data -> ..<timestamp>/."""
    mount = tmp_path / "mount"
    (mount / "..2026_01_01_a").mkdir(parents=True)
    (mount / "..2026_01_01_a" / "config.yaml").write_text("aliases:\n  fast: gpt-4o-mini\n")
    (mount / "..data").symlink_to("..2026_01_01_a")
    (mount / "config.yaml").symlink_to("..data/config.yaml")
    running, watcher = await start_watched(
        gateway_factory, mount / "config.yaml", admin_env(fake_openai.base_url)
    )
    assert await watcher.check() is False  # nothing changed yet

    (mount / "..2026_01_02_b").mkdir()
    (mount / "..2026_01_02_b" / "config.yaml").write_text("aliases:\n  fast: gpt-4o\n")
    (mount / "..data_tmp").symlink_to("..2026_01_02_b")
    os.replace(mount / "..data_tmp", mount / "..data")  # the atomic swap
    for old in (mount / "..2026_01_01_a").iterdir():
        old.unlink()
    (mount / "..2026_01_01_a").rmdir()
    assert await watcher.check() is True
    assert running.gateway.config.aliases == {"fast": "gpt-4o"}


async def test_a_request_in_flight_finishes_on_the_old_config(gateway_factory, fake_openai, tmp_path):
    other = await FakeOpenAI(reply_text="Answer from the new upstream.").start()
    try:
        path = tmp_path / "config.yaml"
        path.write_text(f"providers:\n  openai:\n    base_url: {fake_openai.base_url}\n")
        running, watcher = await start_watched(
            gateway_factory, path, {"OPENAI_API_KEY": "sk-test-upstream-key"}
        )
        client = openai.AsyncOpenAI(api_key="x", base_url=running.proxy_url + "/v1", max_retries=0)
        fake_openai.script.append({"chunk_delay": 0.05})
        stream = await client.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}], stream=True
        )
        first = await stream.__anext__()  # the stream has started on the old upstream
        write(path, f"providers:\n  openai:\n    base_url: {other.base_url}\n")
        assert await watcher.check() is True
        text = (first.choices[0].delta.content or "") + "".join(
            [c.choices[0].delta.content or "" async for c in stream if c.choices]
        )
        assert text == fake_openai.reply_text
        after = await client.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "x"}]
        )
        assert after.choices[0].message.content == "Answer from the new upstream."
    finally:
        await other.stop()
