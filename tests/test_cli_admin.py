"""The `ferro-proxy admin …`, `plugins` and `validate` commands, run as a user runs them:
a separate process talking to a live gateway."""

from __future__ import annotations

import asyncio
import os
import socket
import sys
from pathlib import Path

import openai
import orjson
import yaml

from ferro_proxy.config import load_config
from tests.test_admin import BOOT, BOOT_RO, Admin, admin_env

ROOT = str(Path(__file__).resolve().parent.parent)


async def cli(*argv: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("FERRO_")}
    full_env.update(env or {})
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "ferro_proxy",
        *argv,
        cwd=ROOT,
        env=full_env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await proc.communicate()
    return proc.returncode, out.decode(), err.decode()


async def test_the_readme_story_key_call_stats_reload_rollback(gateway_factory, fake_openai, tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text(
        "aliases:\n  fast: gpt-4o-mini\nplugins:\n  - name: request-logger\n    type: logging\n"
        "    config:\n      persist: true\n      flush_interval: 10ms\n"
    )
    env = {
        **admin_env(fake_openai.base_url),
        "CONFIG_STORE_BACKEND": "sqlite",
        "CONFIG_STORE_DSN": str(tmp_path / "state.db"),
        "API_KEY_STORE_BACKEND": "sqlite",
        "API_KEY_STORE_DSN": str(tmp_path / "state.db"),
        "FERRO_CONFIG_WATCH_INTERVAL": "3600",
    }
    running = await gateway_factory(load_config(path, env), env=env, config_source=str(path))
    user = {"FERRO_ADMIN_URL": running.admin_url, "FERRO_API_KEY": BOOT}

    code, out, err = await cli("admin", "keys", "create", "--name", "my-app", "--format", "json", env=user)
    assert code == 0, err
    created = orjson.loads(out)
    assert created["key"].startswith("sk-ferro-") and created["scopes"] == ["proxy"]

    client = openai.AsyncOpenAI(api_key=created["key"], base_url=running.proxy_url + "/v1", max_retries=0)
    resp = await client.chat.completions.create(model="fast", messages=[{"role": "user", "content": "hi"}])
    assert resp.choices[0].message.content == fake_openai.reply_text

    admin = Admin(running.admin_url, BOOT)
    for _ in range(300):  # the logger writes in the background
        if (await admin.ok("GET", "/admin/logs"))["summary"]["total_entries"]:
            break
        await asyncio.sleep(0.01)
    # independent reads, run side by side
    stats_run, list_run, keys_run, providers_run, health_run = await asyncio.gather(
        cli("admin", "logs", "stats", "--since", "1h", "--format", "json", env=user),
        cli("admin", "logs", "list", env=user),  # a table
        cli("admin", "keys", "list", "--format", "yaml", env=user),
        cli("admin", "providers", "list", env=user),
        cli("admin", "health", "--format", "json", env=user),
    )
    stats = orjson.loads(stats_run[1])
    assert stats_run[0] == 0 and stats["total_requests"] == 1 and stats["tokens"]["total"] == 19
    code, out, _ = list_run
    assert code == 0 and out.splitlines()[0].split()[:3] == ["ts", "id", "key_id"]
    assert created["id"] in out and "gpt-4o-mini" in out
    assert keys_run[0] == 0 and yaml.safe_load(keys_run[1])["data"][0]["name"] == "my-app"
    assert providers_run[0] == 0 and "openai" in providers_run[1]
    assert "sk-test-upstream-key" not in providers_run[1]
    assert orjson.loads(health_run[1])["providers"]["openai"]["status"] == "configured"

    path.write_text(path.read_text().replace("fast: gpt-4o-mini", "fast: gpt-4o"))
    assert await running.gateway.services["config_watcher"].check() is True
    code, out, _ = await cli("admin", "config", "history", env=user)
    lines = out.splitlines()
    assert code == 0 and lines[0].split()[:4] == ["version", "created_at", "actor", "source"]
    assert [line.split()[0] for line in lines[1:]] == ["2", "1"] and " file " in lines[1]

    code, out, _ = await cli("admin", "config", "rollback", "1", env=user)
    assert code == 0 and "rolled_back_from  1" in out
    assert running.gateway.config.aliases == {"fast": "gpt-4o-mini"}
    code, out, _ = await cli("admin", "config", "get", env=user)
    assert code == 0 and "# version 3" in out and yaml.safe_load(out)["aliases"] == {"fast": "gpt-4o-mini"}

    new_config = tmp_path / "new.json"
    new_config.write_text('{"aliases": {"smart": "gpt-4o"}}')
    code, out, err = await cli(
        "admin",
        "config",
        "set",
        str(new_config),
        "--api-key",
        BOOT,
        env={"FERRO_ADMIN_URL": running.admin_url},
    )
    assert code == 0, err
    assert running.gateway.config.aliases == {"smart": "gpt-4o"}


async def test_wrong_scope_missing_key_and_unreachable_gateway(gateway_factory, fake_openai):
    running = await gateway_factory(env=admin_env(fake_openai.base_url))
    url = {"FERRO_ADMIN_URL": running.admin_url}
    code, out, err = await cli(
        "admin", "keys", "create", "--name", "x", env={**url, "FERRO_API_KEY": BOOT_RO}
    )
    assert code == 1 and out == ""
    assert "HTTP 403 insufficient_scope" in err and "lacks the scope" in err
    code, _, err = await cli("admin", "keys", "list", env=url)
    assert code == 1 and "HTTP 401" in err and "--api-key" in err

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        free = s.getsockname()[1]
    code, _, err = await cli(
        "admin", "health", "--gateway-url", f"http://127.0.0.1:{free}", env={"FERRO_API_KEY": BOOT}
    )
    assert code == 2 and "cannot reach the gateway admin API" in err and "Traceback" not in err


async def test_plugins_and_validate(tmp_path):
    code, out, _ = await cli("plugins")
    assert code == 0 and out.splitlines()[0].split() == ["name", "type", "description"]
    assert any(line.startswith("request-logger") and " logging " in line for line in out.splitlines())
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "targets:\n  - weight: heavy\nplugins:\n  - name: request-logger\n    config:\n      level: loud\n"
    )
    code, out, _ = await cli("validate", str(bad))
    assert code == 1 and "3 error(s)" in out
    assert "targets[0].virtual_key: required field missing" in out and "plugins[0].config.level" in out
