"""Hot-path behaviour kept while making requests cheaper: batched log writing that never
blocks request handling, cached metric children, coalesced stream writes."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import os
import sys
import threading

import aiohttp
from aiohttp import web

from ferro_proxy.jsonlog import BatchingStreamHandler, JsonFormatter
from tests.fakes.openai_upstream import FakeOpenAI


class StalledStream(io.StringIO):
    """A stdout whose reader has stopped: write() blocks until released."""

    def __init__(self) -> None:
        super().__init__()
        self.release = threading.Event()
        self.entered = threading.Event()

    def write(self, text: str) -> int:
        self.entered.set()
        self.release.wait(10)
        return super().write(text)


def _record(n: int) -> logging.LogRecord:
    return logging.LogRecord("ferro_proxy.access", logging.INFO, __file__, 1, f"line {n}", None, None)


def test_log_lines_keep_their_order_and_a_stalled_output_only_drops_lines():
    stream = StalledStream()
    handler = BatchingStreamHandler(stream, max_pending=50, linger=0)
    handler.setFormatter(JsonFormatter())
    handler.handle(_record(0))
    assert stream.entered.wait(5)  # the writer thread is now stuck in write()
    for n in range(1, 201):  # returns at once although nothing can be written
        handler.handle(_record(n))
    stream.release.set()
    handler.close()
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    messages = [line["msg"] for line in lines]
    assert messages[:51] == [f"line {n}" for n in range(51)]
    assert lines[-1]["level"] == "warning"
    assert "dropped 150 log lines" in lines[-1]["msg"]


def test_log_lines_reach_the_output_without_an_explicit_flush():
    stream = io.StringIO()
    handler = BatchingStreamHandler(stream, linger=0)
    handler.setFormatter(JsonFormatter())
    try:
        handler.handle(_record(1))
        for _ in range(500):
            if stream.getvalue():
                break
            threading.Event().wait(0.01)
        assert json.loads(stream.getvalue())["msg"] == "line 1"
    finally:
        handler.close()


async def _start_gateway_process(upstream: str) -> tuple[asyncio.subprocess.Process, str]:
    env = {
        **os.environ,
        "OPENAI_API_KEY": "sk-test-upstream-key",
        "OPENAI_BASE_URL": upstream,
        "LOG_LEVEL": "info",
        "PYTHONUNBUFFERED": "1",
    }
    read_end, write_end = os.pipe()
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "ferro_proxy",
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--admin-listen",
        "127.0.0.1:0",
        stdout=write_end,
        env=env,
    )
    os.close(write_end)
    reader = os.fdopen(read_end, "rb", buffering=0)
    loop = asyncio.get_running_loop()
    buf = b""
    while b'"listening"' not in buf:
        chunk = await asyncio.wait_for(loop.run_in_executor(None, reader.read, 4096), 30)
        if not chunk:
            raise RuntimeError("the gateway exited before listening")
        buf += chunk
    line = next(x for x in buf.splitlines() if b'"listening"' in x)
    proc._ferro_log = reader  # type: ignore[attr-defined]  # kept open and deliberately unread
    return proc, "http://" + json.loads(line)["proxy"]


async def test_gateway_keeps_answering_while_nobody_reads_its_log_output(fake_openai: FakeOpenAI):
    proc, proxy = await _start_gateway_process(fake_openai.base_url)
    try:
        body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}
        # ~400 access lines are several times what a pipe buffers: a log write on the event
        # loop would block it once the pipe is full, and these requests would never finish.
        async with aiohttp.ClientSession() as s:

            async def one() -> int:
                async with s.post(proxy + "/v1/chat/completions", json=body) as r:
                    await r.read()
                    return r.status

            for _ in range(25):
                statuses = await asyncio.wait_for(asyncio.gather(*(one() for _ in range(16))), 30)
                assert statuses == [200] * 16
    finally:
        proc.terminate()
        proc._ferro_log.close()  # type: ignore[attr-defined]
        await proc.wait()


async def test_streamed_headers_go_out_at_once_when_the_body_is_not_ready_yet(gateway_factory):
    """Headers ride on the first chunk only when it is at hand; a pass-through answer whose
    upstream pauses before its body still shows the client its status and headers at once."""
    release = asyncio.Event()

    async def slow_content(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
        await resp.prepare(request)
        await release.wait()
        await resp.write(b"file bytes")
        await resp.write_eof()
        return resp

    app = web.Application()
    app.router.add_get("/v1/files/{id}/content", slow_content)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        running = await gateway_factory(
            env={"OPENAI_API_KEY": "sk-test-upstream-key", "OPENAI_BASE_URL": f"http://127.0.0.1:{port}/v1"}
        )
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as s:
            async with s.get(running.proxy_url + "/v1/files/file-1/content") as r:
                assert r.status == 200  # arrived while the upstream still holds the body back
                assert r.headers["Content-Type"] == "application/octet-stream"
                release.set()
                assert await asyncio.wait_for(r.read(), 10) == b"file bytes"
    finally:
        release.set()
        await runner.cleanup()


async def test_streamed_chat_arrives_whole_with_its_headers(gateway, openai_client):
    stream = await openai_client.chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}], stream=True
    )
    assert stream.headers["content-type"].startswith("text/event-stream")
    assert stream.headers["x-request-id"]
    text = ""
    async for chunk in stream.parse():
        if chunk.choices:
            text += chunk.choices[0].delta.content or ""
    assert text == FakeOpenAI().reply_text


async def test_metrics_keep_counting_every_request_of_a_label_set(gateway, openai_client):
    for _ in range(3):
        await openai_client.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}]
        )
    async with aiohttp.ClientSession() as s:
        async with s.get(gateway.admin_url + "/metrics") as r:
            text = await r.text()
    lines = set(text.splitlines())
    labels = 'endpoint="chat",model="gpt-4o-mini",provider="openai",status="200"'
    assert f"ferro_requests_total{{{labels}}} 3.0" in lines
    assert 'ferro_tokens_total{direction="input",model="gpt-4o-mini",provider="openai"} 36.0' in lines
    assert 'ferro_router_attempts_total{outcome="ok",target="openai"} 3.0' in lines
