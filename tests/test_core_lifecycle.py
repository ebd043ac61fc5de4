"""Process lifecycle: SIGTERM drains in-flight streams, refuses new work, exits 0."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys

import aiohttp


async def _spawn(env: dict[str, str], *args: str) -> tuple[asyncio.subprocess.Process, dict]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "ferro_proxy",
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--admin-listen",
        "127.0.0.1:0",
        *args,
        env={**os.environ, **env},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    assert proc.stdout is not None
    while True:
        line = await asyncio.wait_for(proc.stdout.readline(), 20)
        assert line, (await proc.stderr.read()).decode()
        record = json.loads(line)
        if record.get("msg") == "listening":
            return proc, record


async def test_sigterm_drains_streams_then_exits_zero(fake_openai):
    proc, info = await _spawn(
        {"OPENAI_API_KEY": "sk-k", "OPENAI_BASE_URL": fake_openai.base_url, "LOG_LEVEL": "info"},
        "--drain-seconds",
        "10",
    )
    proxy = "http://" + info["proxy"]
    admin = "http://" + info["admin"]
    fake_openai.script.append({"chunk_delay": 0.15})
    try:
        async with aiohttp.ClientSession() as s:
            async with s.post(
                proxy + "/v1/chat/completions",
                json={
                    "model": "gpt-4o-mini",
                    "messages": [{"role": "user", "content": "hi"}],
                    "stream": True,
                },
            ) as r:
                first = await r.content.readline()
                assert first.startswith(b"data: ")
                proc.send_signal(signal.SIGTERM)
                await asyncio.sleep(0.2)
                async with s.get(admin + "/ready") as ready:
                    assert ready.status == 503, "readiness must go false while draining"
                rest = await r.read()
            assert rest.rstrip().endswith(b"data: [DONE]"), "the in-flight stream must finish"
            # a kept-alive connection gets a clean 503 and is closed ...
            async with s.post(
                proxy + "/v1/chat/completions", json={"model": "gpt-4o-mini", "messages": []}
            ) as r2:
                assert r2.status == 503 and (await r2.json())["error"]["code"] == "draining"
        # ... and new connections are refused
        refused = False
        async with aiohttp.ClientSession() as s2:
            try:
                async with s2.get(proxy + "/health", timeout=aiohttp.ClientTimeout(total=2)) as r3:
                    await r3.read()
            except aiohttp.ClientError:
                refused = True
        assert refused, "no new connections are accepted after SIGTERM"
        assert await asyncio.wait_for(proc.wait(), 15) == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def test_runs_on_embedded_defaults_without_any_config():
    env = {k: v for k, v in os.environ.items() if not k.endswith("_API_KEY")}
    env.pop("GATEWAY_CONFIG", None)
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "ferro_proxy",
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--admin-listen",
        "127.0.0.1:0",
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None
        line = await asyncio.wait_for(proc.stdout.readline(), 20)
        record = json.loads(line)
        while record.get("msg") != "listening":
            record = json.loads(await asyncio.wait_for(proc.stdout.readline(), 20))
        async with aiohttp.ClientSession() as s:
            async with s.get("http://" + record["admin"] + "/health") as r:
                body = await r.json()
                assert body["status"] == "degraded" and "OPENAI_API_KEY" in body["message"]
            async with s.post(
                "http://" + record["proxy"] + "/v1/chat/completions",
                json={"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "x"}]},
            ) as r:
                assert r.status == 404 and (await r.json())["error"]["code"] == "model_not_found"
    finally:
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 15) == 0


async def test_port_in_use_fails_cleanly_with_nonzero_exit():
    import socket

    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    port = busy.getsockname()[1]
    try:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "ferro_proxy",
            "serve",
            "--listen",
            f"127.0.0.1:{port}",
            "--admin-listen",
            "127.0.0.1:0",
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(proc.communicate(), 30)
    finally:
        busy.close()
    assert proc.returncode == 1
    assert b"cannot listen" in err
    assert b"Traceback" not in err and b"Unclosed" not in err
