"""Streams and the router: fail over before the first byte, never after it."""

from __future__ import annotations

import openai
import pytest

from tests.fakes.fleet import Fleet, get_json, metric_value, metrics_text

MESSAGES = [{"role": "user", "content": "hi"}]


@pytest.fixture
async def fleet():
    f = Fleet()
    yield f
    await f.stop()


@pytest.fixture
async def gw(gateway_factory, fleet):
    await fleet.add("openai", "groq")
    return await gateway_factory(
        {
            "strategy": {"mode": "fallback"},
            "targets": [
                {
                    "virtual_key": "openai",
                    "retry": {"attempts": 2, "initial_backoff_ms": 1},
                    "circuit_breaker": {"failure_threshold": 5},
                },
                {"virtual_key": "groq", "model": "llama-3.1-8b-instant"},
            ],
            "providers": fleet.providers(),
        }
    )


@pytest.fixture
async def client(gw):
    c = openai.AsyncOpenAI(api_key="sk-placeholder", base_url=gw.proxy_url + "/v1", max_retries=0)
    yield c
    await c.close()


async def stream_text(client: openai.AsyncOpenAI, **kw) -> str:
    stream = await client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, stream=True, **kw)
    text = ""
    async for chunk in stream:
        if chunk.choices:
            text += chunk.choices[0].delta.content or ""
    return text


async def test_a_stream_cut_before_its_first_byte_fails_over(client, fleet):
    # openai: retried once (a cut stream is a transport failure), then groq serves it
    fleet["openai"].script = [{"cut_after": 0}, {"status": 500}]
    assert await stream_text(client) == "hello from groq"
    assert fleet.counts() == {"openai": 2, "groq": 1}


async def test_a_stream_is_retried_on_the_same_target_before_its_first_byte(client, fleet):
    fleet["openai"].script = [{"reset": True}]
    assert await stream_text(client) == "hello from openai"
    assert fleet.counts() == {"openai": 2, "groq": 0}


async def test_a_stream_cut_after_bytes_went_out_is_never_retried(client, fleet, gw):
    fleet["openai"].script = [{"cut_after": 3}]
    stream = await client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, stream=True)
    received = ""
    with pytest.raises(openai.APIError) as info:
        async for chunk in stream:
            if chunk.choices:
                received += chunk.choices[0].delta.content or ""
    assert received == "hello from "  # what arrived before the cut; "openai" never came
    assert "openai" in str(info.value.message)
    assert fleet.counts() == {"openai": 1, "groq": 0}
    # the broken stream counts against openai's breaker
    health = await get_json(gw.admin_url + "/health")
    assert health["targets"]["openai"]["consecutive_failures"] == 1


async def test_a_finished_stream_is_priced_and_recorded(client, fleet, gw):
    text = await stream_text(client, stream_options={"include_usage": True})
    assert text == "hello from openai"
    metrics = await metrics_text(gw.admin_url)
    # 12 prompt + 7 completion tokens on gpt-4o-mini
    assert metric_value(
        metrics, "ferro_cost_usd_total", provider="openai", model="gpt-4o-mini"
    ) == pytest.approx((12 * 0.15 + 7 * 0.6) / 1e6)
    assert metric_value(metrics, "ferro_router_attempts_total", target="openai", outcome="ok") == 1
    health = await get_json(gw.proxy_url + "/health")
    assert health["targets"]["openai"]["latency_p50_ms"] > 0  # time to first token
