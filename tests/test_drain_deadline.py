"""The drain is a deadline: requests still running when it passes are ended (a stream with an
SSE error event `gateway_shutting_down`, a JSON request with a 503), accounted, and the
gateway is stopped within drain + 2 s, whatever aiohttp's own shutdown timeout is."""

from __future__ import annotations

import asyncio
import time

import aiohttp
import orjson

from tests.fakes.openai_upstream import FakeOpenAI

MESSAGES = [{"role": "user", "content": "tell me a long story"}]


async def test_long_requests_are_ended_at_the_drain_deadline(gateway_factory, fake_openai: FakeOpenAI) -> None:
    running = await gateway_factory(
        {"stream_header_hold": 0, "sse_keepalive": 0},
        env={"OPENAI_API_KEY": "sk-test-drain-deadline", "OPENAI_BASE_URL": fake_openai.base_url},
    )
    fake_openai.script = [{"chunk_delay": 3}, {"stall": 12}]
    async with aiohttp.ClientSession() as session:
        stream_resp = await session.post(
            running.proxy_url + "/v1/chat/completions",
            json={"model": "gpt-4o-mini", "messages": MESSAGES, "stream": True},
        )
        assert stream_resp.status == 200
        first = await stream_resp.content.readline()
        assert first.startswith(b"data: ")
        json_task = asyncio.create_task(
            session.post(running.proxy_url + "/v1/chat/completions", json={"model": "gpt-4o-mini", "messages": MESSAGES})
        )
        await asyncio.sleep(0.5)  # both requests are in flight upstream
        began = time.monotonic()
        await running.drain_and_stop(1.0)
        took = time.monotonic() - began
        rest = await asyncio.wait_for(stream_resp.content.read(), 5)
        json_resp = await asyncio.wait_for(json_task, 5)
        json_body = await json_resp.json()
    assert took < 1.0 + 2.0, f"the drain took {took:.1f} s"
    events = [line[6:] for line in rest.split(b"\n") if line.startswith(b"data: ")]
    assert events and b"[DONE]" not in events
    assert orjson.loads(events[-1])["error"]["code"] == "gateway_shutting_down"
    assert json_resp.status == 503 and json_body["error"]["code"] == "gateway_shutting_down"
