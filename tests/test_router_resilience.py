"""Retries, circuit breakers, per-target limits and deadlines, against failing fake upstreams."""

from __future__ import annotations

import asyncio
import time

import openai
import pytest

from ferro_proxy.config import config_from_data
from tests.fakes.fleet import Fleet, get_json, metric_value, metrics_text

MESSAGES = [{"role": "user", "content": "hi"}]


@pytest.fixture
async def fleet():
    f = Fleet()
    yield f
    await f.stop()


_clients: dict[str, openai.AsyncOpenAI] = {}


@pytest.fixture(autouse=True)
async def _close_clients():
    yield
    while _clients:
        await _clients.popitem()[1].close()


def client(running) -> openai.AsyncOpenAI:
    """One SDK client per gateway (building one loads TLS roots: slow enough to skew timings)."""
    c = _clients.get(running.proxy_url)
    if c is None:
        c = openai.AsyncOpenAI(api_key="sk-placeholder", base_url=running.proxy_url + "/v1", max_retries=0)
        _clients[running.proxy_url] = c
    return c


async def chat(running, model: str = "gpt-4o-mini", **kw):
    return await client(running).chat.completions.create(model=model, messages=MESSAGES, **kw)


def with_fallback(fleet: Fleet, openai_target: dict, **top) -> dict:
    return {
        "strategy": {"mode": "fallback"},
        "targets": [
            {"virtual_key": "openai", **openai_target},
            {"virtual_key": "groq", "model": "llama-3.1-8b-instant"},
        ],
        "providers": fleet.providers(),
        **top,
    }


# ---------------------------------------------------------------- retries


async def test_retries_on_listed_statuses_and_transport_errors(gateway_factory, fleet):
    await fleet.add("openai")
    gw = await gateway_factory(
        {
            "strategy": {"mode": "single"},
            "targets": [{"virtual_key": "openai", "retry": {"attempts": 4, "initial_backoff_ms": 1}}],
            "providers": fleet.providers(),
        }
    )
    fleet["openai"].script = [{"status": 500}, {"reset": True}, {"status": 503}]
    resp = await chat(gw)
    assert resp.choices[0].message.content == "hello from openai"
    assert len(fleet["openai"].requests) == 4


async def test_statuses_not_listed_are_not_retried_on_the_same_target(gateway_factory, fleet):
    await fleet.add("openai", "groq")
    retry = {"attempts": 3, "on_status_codes": [503], "initial_backoff_ms": 1}
    gw = await gateway_factory(with_fallback(fleet, {"retry": retry}))
    fleet["openai"].script = [{"status": 500}]
    resp = await chat(gw)
    assert resp.choices[0].message.content == "hello from groq"
    assert fleet.counts() == {"openai": 1, "groq": 1}


async def test_retry_after_is_honoured(gateway_factory, fleet):
    await fleet.add("openai")
    gw = await gateway_factory(
        {
            "targets": [
                {
                    "virtual_key": "openai",
                    "retry": {"attempts": 2, "initial_backoff_ms": 1, "max_backoff_ms": 1},
                }
            ],
            "providers": fleet.providers(),
        }
    )
    fleet["openai"].script = [{"status": 429, "retry_after": 1}]
    started = time.monotonic()
    await chat(gw)
    assert time.monotonic() - started >= 0.95  # waited the upstream's Retry-After, not the 1 ms backoff
    assert len(fleet["openai"].requests) == 2


async def test_retry_after_beyond_the_deadline_ends_retrying(gateway_factory, fleet):
    await fleet.add("openai", "groq")
    gw = await gateway_factory(
        with_fallback(fleet, {"retry": {"attempts": 5, "initial_backoff_ms": 1}}, request_timeout="5s")
    )
    fleet["openai"].script = [{"status": 429, "retry_after": 60}]
    resp = await chat(gw)
    assert resp.choices[0].message.content == "hello from groq"
    assert fleet.counts() == {"openai": 1, "groq": 1}
    # with nowhere to fall back to, the client gets the 429 and its Retry-After
    gw_single = await gateway_factory(
        {
            "targets": [{"virtual_key": "openai", "retry": {"attempts": 5}}],
            "providers": fleet.providers(),
            "request_timeout": "5s",
        }
    )
    fleet["openai"].script = [{"status": 429, "retry_after": 60}]
    with pytest.raises(openai.RateLimitError) as info:
        await chat(gw_single)
    assert info.value.response.headers["retry-after"] == "60"
    assert fleet.counts()["openai"] == 2  # one request per gateway: no retry


# ---------------------------------------------------------------- circuit breaker


async def test_breaker_opens_skips_half_opens_and_closes(gateway_factory, fleet):
    await fleet.add("openai", "groq")
    breaker = {"failure_threshold": 2, "success_threshold": 1, "timeout": "300ms"}
    gw = await gateway_factory(with_fallback(fleet, {"circuit_breaker": breaker}))
    fleet["openai"].script = [{"status": 500}, {"status": 500}]
    for _ in range(2):
        assert (await chat(gw)).choices[0].message.content == "hello from groq"
    assert fleet.counts() == {"openai": 2, "groq": 2}
    for url in (gw.proxy_url, gw.admin_url):  # /health on both listeners
        health = await get_json(url + "/health")
        assert health["targets"]["openai"]["state"] == "open"
        assert health["targets"]["groq:llama-3.1-8b-instant"]["state"] == "closed"
    assert metric_value(await metrics_text(gw.admin_url), "ferro_circuit_state", target="openai") == 1
    # open: skipped without a request
    assert (await chat(gw)).choices[0].message.content == "hello from groq"
    assert fleet.counts() == {"openai": 2, "groq": 3}
    await asyncio.sleep(0.35)
    assert metric_value(await metrics_text(gw.admin_url), "ferro_circuit_state", target="openai") == 2
    assert (await get_json(gw.admin_url + "/health"))["targets"]["openai"]["state"] == "half_open"
    # a successful probe closes it
    assert (await chat(gw)).choices[0].message.content == "hello from openai"
    assert (await get_json(gw.admin_url + "/health"))["targets"]["openai"]["state"] == "closed"
    assert metric_value(await metrics_text(gw.admin_url), "ferro_circuit_state", target="openai") == 0


async def test_a_failed_probe_opens_the_circuit_again(gateway_factory, fleet):
    await fleet.add("openai", "groq")
    breaker = {"failure_threshold": 1, "timeout": "1s"}
    gw = await gateway_factory(with_fallback(fleet, {"circuit_breaker": breaker}))
    fleet["openai"].script = [{"status": 500}, {"reset": True}]
    await chat(gw)
    await asyncio.sleep(1.05)
    await chat(gw)  # the probe fails
    assert fleet.counts() == {"openai": 2, "groq": 2}
    await chat(gw)  # open again: not asked
    assert fleet.counts() == {"openai": 2, "groq": 3}


async def test_every_circuit_open_is_503_upstream_unavailable(gateway_factory, fleet):
    await fleet.add("openai", "groq")
    breaker = {"failure_threshold": 1, "timeout": "30s"}
    gw = await gateway_factory(
        {
            "strategy": {"mode": "fallback"},
            "targets": [
                {"virtual_key": "openai", "circuit_breaker": breaker},
                {"virtual_key": "groq", "models": ["gpt-4o-mini"], "circuit_breaker": breaker},
            ],
            "providers": fleet.providers(),
        }
    )
    fleet["openai"].script = [{"status": 500}]
    fleet["groq"].script = [{"status": 500}]
    with pytest.raises(openai.APIStatusError):
        await chat(gw)
    with pytest.raises(openai.APIStatusError) as info:
        await chat(gw)
    err = info.value
    assert err.status_code == 503 and err.body["code"] == "upstream_unavailable"
    assert "openai (circuit open)" in err.body["message"] and "groq (circuit open)" in err.body["message"]
    assert int(err.response.headers["retry-after"]) > 0
    assert fleet.counts() == {"openai": 1, "groq": 1}


async def test_429s_do_not_open_the_circuit(gateway_factory, fleet):
    await fleet.add("openai")
    gw = await gateway_factory(
        {
            "targets": [{"virtual_key": "openai", "circuit_breaker": {"failure_threshold": 1}}],
            "providers": fleet.providers(),
        }
    )
    fleet["openai"].script = [{"status": 429, "retry_after": 0}] * 3
    for _ in range(3):
        with pytest.raises(openai.RateLimitError):
            await chat(gw)
    assert (await chat(gw)).choices[0].message.content == "hello from openai"
    assert len(fleet["openai"].requests) == 4


async def test_breaker_state_survives_a_config_reload(gateway_factory, fleet):
    await fleet.add("openai", "groq")
    data = with_fallback(fleet, {"circuit_breaker": {"failure_threshold": 1, "timeout": "30s"}})
    gw = await gateway_factory(data)
    fleet["openai"].script = [{"status": 500}]
    await chat(gw)
    data["aliases"] = {"fast": "gpt-4o-mini"}  # any change builds a new runtime and router
    old_router = gw.gateway.runtime.chain.terminal
    await gw.gateway.apply(config_from_data(data))
    assert gw.gateway.runtime.chain.terminal is not old_router
    assert (await get_json(gw.proxy_url + "/health"))["targets"]["openai"]["state"] == "open"
    await chat(gw, model="fast")
    assert fleet.counts() == {"openai": 1, "groq": 2}


# ---------------------------------------------------------------- limits and time


async def test_max_concurrency_with_a_full_queue_is_429_provider_saturated(gateway_factory, fleet):
    await fleet.add("openai")
    fleet["openai"].latency = 0.3
    gw = await gateway_factory(
        {
            "targets": [{"virtual_key": "openai", "max_concurrency": 1, "max_queue": 1}],
            "providers": fleet.providers(),
        }
    )
    results = await asyncio.gather(*(chat(gw) for _ in range(3)), return_exceptions=True)
    errors = [r for r in results if isinstance(r, Exception)]
    assert len(errors) == 1, results  # one in flight, one queued, one turned away
    assert isinstance(errors[0], openai.RateLimitError)
    assert errors[0].body["code"] == "provider_saturated"
    assert len(fleet["openai"].requests) == 2


async def test_a_saturated_target_falls_over_to_the_next(gateway_factory, fleet):
    await fleet.add("openai", "groq")
    fleet["openai"].latency = 0.3
    gw = await gateway_factory(with_fallback(fleet, {"max_concurrency": 1, "max_queue": 0}))
    results = await asyncio.gather(chat(gw), chat(gw))
    assert sorted(r.choices[0].message.content for r in results) == ["hello from groq", "hello from openai"]


async def test_a_stalled_target_times_out_and_the_next_answers(gateway_factory, fleet):
    await fleet.add("openai", "groq")
    gw = await gateway_factory(with_fallback(fleet, {"timeout": {"total": "300ms"}}))
    fleet["openai"].script = [{"stall": 5}]
    resp = await chat(gw)
    assert resp.choices[0].message.content == "hello from groq"
    assert fleet.counts() == {"openai": 1, "groq": 1}


async def test_the_request_deadline_is_504_gateway_timeout(gateway_factory, fleet):
    await fleet.add("openai", "groq")
    gw = await gateway_factory(with_fallback(fleet, {}, request_timeout="400ms"))
    fleet["openai"].script = [{"stall": 5}]
    with pytest.raises(openai.APIStatusError) as info:
        await chat(gw)
    assert info.value.status_code == 504 and info.value.body["code"] == "gateway_timeout"
    assert fleet.counts()["groq"] == 0  # no time left to try it
