"""Streams are timed as streams (first_byte, idle, stream_total; `total` is for whole answers),
and a slow first token gets its headers early plus keepalives, while failover still works
until the first content chunk. Fake OpenAI-compatible upstreams on loopback, paced by script."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import aiohttp
import anthropic
import openai
import orjson
import pytest

from ferro_proxy.config import config_from_data
from tests.fakes.fleet import Fleet, get_json

MESSAGES = [{"role": "user", "content": "hi"}]
SIX_WORDS = "one two three four five six"  # 8 frames: role, 6 words, finish


@pytest.fixture
async def fleet():
    f = Fleet()
    await f.add("openai", "groq")
    yield f
    await f.stop()


@pytest.fixture
def start(gateway_factory, fleet):
    async def start(openai_target: dict[str, Any] | None = None, **top: Any):
        return await gateway_factory(
            {
                "strategy": {"mode": "fallback"},
                "targets": [
                    {
                        "virtual_key": "openai",
                        "circuit_breaker": {"failure_threshold": 5},
                        **(openai_target or {}),
                    },
                    {"virtual_key": "groq", "model": "llama-3.1-8b-instant"},
                ],
                "providers": fleet.providers(),
                **top,
            }
        )

    return start


def sdk(gw) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(api_key="sk-placeholder", base_url=gw.proxy_url + "/v1", max_retries=0)


async def sdk_text(gw, content: str = "hi") -> str:
    client = sdk(gw)
    try:
        stream = await client.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": content}], stream=True
        )
        text = ""
        async for chunk in stream:
            if chunk.choices:
                text += chunk.choices[0].delta.content or ""
        return text
    finally:
        await client.close()


class Timed:
    """A raw streamed answer: status, headers, when they came, and each SSE event with its time."""

    def __init__(self) -> None:
        self.status = 0
        self.headers: dict[str, str] = {}
        self.headers_at = 0.0
        self.events: list[tuple[float, bytes]] = []

    def kinds(self) -> list[str]:
        out = []
        for _, e in self.events:
            if e.startswith(b": keepalive"):
                out.append("keepalive")
            elif e.startswith(b"event: ping"):
                out.append("ping")
            elif e.startswith(b"event: error"):
                out.append("error")
            elif e.startswith(b"data: [DONE]"):
                out.append("done")
            else:
                out.append("content")
        return out

    def error(self) -> dict[str, Any]:
        [event] = [e for _, e in self.events if e.startswith(b"event: error")]
        return orjson.loads(event.split(b"data: ", 1)[1])["error"]

    def text(self) -> str:
        text = ""
        for _, e in self.events:
            if e.startswith(b"data: {"):
                for choice in orjson.loads(e[6:]).get("choices") or []:
                    text += (choice.get("delta") or {}).get("content") or ""
        return text


async def timed_post(url: str, body: dict[str, Any]) -> Timed:
    out = Timed()
    began = time.monotonic()
    async with aiohttp.ClientSession() as s, s.post(url, json=body) as r:
        out.status, out.headers, out.headers_at = r.status, dict(r.headers), time.monotonic() - began
        buf = b""
        async for data in r.content.iter_any():
            buf += data
            while b"\n\n" in buf:
                event, buf = buf.split(b"\n\n", 1)
                out.events.append((time.monotonic() - began, event + b"\n\n"))
        if buf.strip():
            out.events.append((time.monotonic() - began, buf))
    return out


def chat(content: str = "hi") -> dict[str, Any]:
    return {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": content}], "stream": True}


async def breaker(gw, target: str = "openai") -> dict[str, Any]:
    return (await get_json(gw.admin_url + "/health"))["targets"][target]


# ---------------------------------------------------------------- item 4: stream timeouts


async def test_a_healthy_4s_stream_outlives_total_and_the_breaker_stays_closed(start, fleet):
    gw = await start({"timeout": {"total": "2s"}, "circuit_breaker": {"failure_threshold": 1}})
    fleet["openai"].script = [{"chunk_delay": 0.5, "text": SIX_WORDS}]
    began = time.monotonic()
    assert await sdk_text(gw) == SIX_WORDS
    assert time.monotonic() - began >= 3.5
    health = await breaker(gw)
    assert (health["state"], health["consecutive_failures"]) == ("closed", 0)
    assert fleet.counts() == {"openai": 1, "groq": 0}


async def test_total_still_bounds_a_whole_answer(start, fleet):
    gw = await start({"timeout": {"total": "0.5s"}})
    fleet["openai"].script = [{"stall": 3}]
    client = sdk(gw)
    began = time.monotonic()
    answer = await client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    await client.close()
    assert answer.choices[0].message.content == "hello from groq"  # openai cut at 0.5 s
    assert time.monotonic() - began < 1.5
    assert (await breaker(gw))["consecutive_failures"] == 1


async def test_an_idle_gap_cuts_the_stream_and_counts_for_the_breaker(start, fleet):
    gw = await start({"timeout": {"idle": "0.5s", "total": "0.2s"}})
    fleet["openai"].script = [{"chunk_delay": 1.5}]
    began = time.monotonic()
    got = await timed_post(gw.proxy_url + "/v1/chat/completions", chat())
    assert got.status == 200
    assert got.kinds() == ["content", "error"]  # the role chunk, then the cut
    assert got.error()["code"] == "stream_idle_timeout"
    assert "0.5s" in got.error()["message"]
    assert 0.4 < got.events[-1][0] < 1.4 and time.monotonic() - began < 1.5
    assert (await breaker(gw))["consecutive_failures"] == 1
    assert fleet.counts() == {"openai": 1, "groq": 0}  # content went out: never retried


async def test_stream_total_cuts_without_counting_for_the_breaker(start, fleet):
    gw = await start(
        {"timeout": {"stream_total": "1s", "idle": "2s"}, "circuit_breaker": {"failure_threshold": 1}}
    )
    fleet["openai"].script = [{"chunk_delay": 0.4, "text": SIX_WORDS}]
    got = await timed_post(gw.proxy_url + "/v1/chat/completions", chat())
    assert got.kinds()[-1] == "error" and got.kinds().count("content") == 3  # at 0, 0.4, 0.8 s
    assert got.error()["code"] == "stream_total_exceeded"
    assert "stream_total" in got.error()["message"]
    assert 0.9 < got.events[-1][0] < 1.5
    health = await breaker(gw)
    assert (health["state"], health["consecutive_failures"]) == ("closed", 0)
    # the SDK sees the cut as an error, not as a finished answer
    fleet["openai"].script = [{"chunk_delay": 0.4, "text": SIX_WORDS}]
    with pytest.raises(openai.APIError):
        await sdk_text(gw)


async def test_first_byte_times_the_first_token_and_fails_over(start, fleet):
    gw = await start({"timeout": {"first_byte": "0.8s"}})
    fleet["openai"].script = [{"ttft": 3}]  # headers at once, no token in time
    began = time.monotonic()
    assert await sdk_text(gw) == "hello from groq"
    assert time.monotonic() - began < 2.0
    assert (await breaker(gw))["consecutive_failures"] == 1


# ---------------------------------------------------------------- item 5: slow first token


async def test_a_slow_first_token_gets_headers_and_keepalives_everywhere(start, fleet):
    gw = await start(
        stream_header_hold="0.5s",
        sse_keepalive="1s",
        plugins=[{"name": "response-cache", "type": "transform", "config": {"max_age": "5m"}}],
    )
    fleet["openai"].script = [{"ttft": 3}] * 4
    url = gw.proxy_url
    claude = anthropic.AsyncAnthropic(api_key="sk-placeholder", base_url=url, max_retries=0)
    messages_body = {**chat("native"), "max_tokens": 64}

    async def via_anthropic_sdk() -> str:
        async with claude.messages.stream(
            model="gpt-4o-mini", max_tokens=64, messages=[{"role": "user", "content": "claude"}]
        ) as stream:
            return "".join([t async for t in stream.text_stream])

    raw, sdk_got, native, claude_got = await asyncio.gather(
        timed_post(url + "/v1/chat/completions", chat("raw")),
        sdk_text(gw, "sdk"),
        timed_post(url + "/v1/messages", messages_body),
        via_anthropic_sdk(),
    )
    await claude.close()
    assert (raw.status, raw.headers["Content-Type"].split(";")[0]) == (200, "text/event-stream")
    assert raw.headers_at < 1.2  # held 0.5 s, not 3 s
    kinds = raw.kinds()
    first_content = kinds.index("content")
    assert kinds[:first_content].count("keepalive") >= 2 and set(kinds[:first_content]) == {"keepalive"}
    assert raw.events[first_content][0] > 2.5
    assert kinds[-1] == "done" and raw.text() == "hello from openai"
    assert sdk_got == "hello from openai" == claude_got
    # the Messages ingress keeps its stream alive with Anthropic's own ping events
    assert native.headers_at < 1.2
    native_kinds = native.kinds()
    assert native_kinds[: native_kinds.index("content")].count("ping") >= 2
    assert b": keepalive" not in b"".join(e for _, e in native.events)
    # cached without the keepalives: replayed at once, content only
    again = await timed_post(url + "/v1/chat/completions", chat("raw"))
    assert again.headers.get("x-ferro-cache") == "hit"
    assert "keepalive" not in again.kinds() and again.text() == "hello from openai"
    assert fleet.counts() == {"openai": 4, "groq": 0}


async def test_a_failure_after_the_headers_but_before_content_fails_over(start, fleet):
    gw = await start(stream_header_hold="0.5s", sse_keepalive="0.4s")
    fleet["openai"].script = [{"stall": 1.5, "status": 500}] * 2
    raw, sdk_got = await asyncio.gather(
        timed_post(gw.proxy_url + "/v1/chat/completions", chat("raw")), sdk_text(gw, "sdk")
    )
    assert raw.status == 200 and raw.headers_at < 1.2
    kinds = raw.kinds()
    assert kinds[0] == "keepalive" and "error" not in kinds and kinds[-1] == "done"
    assert raw.text() == "hello from groq" == sdk_got  # one good stream, from the second target
    assert fleet.counts() == {"openai": 2, "groq": 2}
    assert (await breaker(gw))["consecutive_failures"] == 2


async def test_a_client_leaving_while_held_stops_the_upstream_and_settles_the_target(start, fleet):
    gw = await start({"max_concurrency": 1}, stream_header_hold="0.3s", sse_keepalive="0.2s")
    fleet["openai"].script = [{"ttft": 3}]
    async with aiohttp.ClientSession() as s, s.post(gw.proxy_url + "/v1/chat/completions", json=chat()) as r:
        assert r.status == 200
        assert (await r.content.readuntil(b"\n\n")) == b": keepalive\n\n"
    for _ in range(50):
        if fleet["openai"].cancelled:
            break
        await asyncio.sleep(0.05)
    assert fleet["openai"].cancelled == 1  # the upstream connection was dropped
    health = await breaker(gw)
    assert (health["consecutive_failures"], health["in_flight"]) == (0, 0)


async def test_a_failure_within_the_hold_keeps_its_real_status(start, fleet):
    gw = await start(stream_header_hold="3s")
    fleet["openai"].script = [{"stall": 0.3, "status": 429, "retry_after": 7}]
    fleet["groq"].script = [{"status": 429, "retry_after": 9}]
    began = time.monotonic()
    async with aiohttp.ClientSession() as s, s.post(gw.proxy_url + "/v1/chat/completions", json=chat()) as r:
        assert r.status == 429
        assert r.headers["Content-Type"].startswith("application/json")
        assert "Retry-After" in r.headers
        body = await r.json()
    assert body["error"]["type"] == "rate_limit_error"
    assert time.monotonic() - began < 2.0


def test_stream_settings_validate():
    cfg = config_from_data(
        {
            "stream_header_hold": "2s",
            "sse_keepalive": 0,
            "targets": [
                {
                    "virtual_key": "openai",
                    "timeout": {"first_byte": "30s", "idle": "10s", "stream_total": "5m"},
                }
            ],
        },
        env={"OPENAI_API_KEY": "sk-x"},
    )
    assert (cfg.stream_header_hold, cfg.sse_keepalive) == (2.0, 0.0)
    assert cfg.targets[0].timeout.stream_total == 300.0
    with pytest.raises(Exception, match="stream_header_hold: must be >= 0"):
        config_from_data({"stream_header_hold": -1}, env={})
