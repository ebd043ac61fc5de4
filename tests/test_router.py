"""Router strategies, aliases and addressing, driven through the openai SDK against several
fake upstreams on loopback."""

from __future__ import annotations

import collections

import openai
import pytest

from ferro_proxy.config import ConfigError, config_from_data
from tests.fakes.fleet import Fleet, metric_value, metrics_text

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
    return await client(running).chat.completions.create(
        model=model, messages=kw.pop("messages", MESSAGES), **kw
    )


async def test_single_uses_only_the_first_target(gateway_factory, fleet):
    await fleet.add("openai", "groq")
    gw = await gateway_factory(
        {
            "strategy": {"mode": "single"},
            "targets": [{"virtual_key": "openai"}, {"virtual_key": "groq", "models": ["gpt-4o-mini"]}],
            "providers": fleet.providers(),
        }
    )
    fleet["openai"].script = [{"status": 500}]
    with pytest.raises(openai.InternalServerError):
        await chat(gw)
    assert fleet.counts() == {"openai": 1, "groq": 0}
    resp = await chat(gw)
    assert resp.choices[0].message.content == "hello from openai"


async def test_fallback_moves_on_until_a_healthy_target_answers(gateway_factory, fleet):
    await fleet.add("openai", "groq", "together")
    gw = await gateway_factory(
        {
            "strategy": {"mode": "fallback"},
            "targets": [
                {"virtual_key": "openai"},
                {"virtual_key": "groq", "model": "llama-3.1-8b-instant"},
                {"virtual_key": "together", "model": "meta-llama/Llama-3.3-70B-Instruct-Turbo"},
            ],
            "providers": fleet.providers(),
        }
    )
    fleet["openai"].script = [{"status": 503}]
    fleet["groq"].script = [{"reset": True}]
    resp = await chat(gw)
    assert resp.choices[0].message.content == "hello from together"
    assert fleet.counts() == {"openai": 1, "groq": 1, "together": 1}
    # each target was asked for its own model
    assert fleet["groq"].requests[0].body["model"] == "llama-3.1-8b-instant"
    assert fleet["together"].requests[0].body["model"] == "meta-llama/Llama-3.3-70B-Instruct-Turbo"


async def test_fallback_error_names_every_target_tried(gateway_factory, fleet):
    await fleet.add("openai", "groq")
    gw = await gateway_factory(
        {
            "strategy": {"mode": "fallback"},
            "targets": [{"virtual_key": "openai"}, {"virtual_key": "groq", "model": "llama-3.1-8b-instant"}],
            "providers": fleet.providers(),
        }
    )
    fleet["openai"].script = [{"status": 500}]
    fleet["groq"].script = [{"status": 502}]
    with pytest.raises(openai.APIStatusError) as info:
        await chat(gw)
    err = info.value
    assert err.status_code == 502
    assert err.body["code"] == "upstream_error"
    message = err.body["message"]
    assert "openai -> 502 upstream_error" in message and "groq:llama-3.1-8b-instant -> 502" in message
    assert "sk-upstream" not in message


async def test_client_errors_are_neither_retried_nor_failed_over(gateway_factory, fleet):
    await fleet.add("openai", "groq")
    gw = await gateway_factory(
        {
            "strategy": {"mode": "fallback"},
            "targets": [
                {"virtual_key": "openai", "retry": {"attempts": 3, "initial_backoff_ms": 1}},
                {"virtual_key": "groq", "model": "llama-3.1-8b-instant"},
            ],
            "providers": fleet.providers(),
        }
    )
    fleet["openai"].script = [{"status": 400, "message": "bad temperature"}]
    with pytest.raises(openai.BadRequestError) as info:
        await chat(gw)
    assert "bad temperature" in info.value.body["message"]
    assert fleet.counts() == {"openai": 1, "groq": 0}


async def test_loadbalance_weights_hold_and_weight_zero_drains(gateway_factory, fleet):
    await fleet.add("openai", "groq", "together")
    gw = await gateway_factory(
        {
            "strategy": {"mode": "loadbalance"},
            "targets": [
                {"virtual_key": "openai", "weight": 3},
                {"virtual_key": "groq", "weight": 1, "models": ["gpt-4o-mini"]},
                {"virtual_key": "together", "weight": 0, "models": ["gpt-4o-mini"]},
            ],
            "providers": fleet.providers(),
        }
    )
    c = client(gw)
    for _ in range(160):
        await c.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    counts = fleet.counts()
    # expected 120 / 40; the standard deviation is ~5.5, so +-25 fails only on a real skew
    assert abs(counts["openai"] - 120) <= 25, counts
    assert counts["openai"] + counts["groq"] == 160
    assert counts["together"] == 0


async def test_loadbalance_falls_back_to_the_other_targets(gateway_factory, fleet):
    await fleet.add("openai", "groq")
    gw = await gateway_factory(
        {
            "strategy": {"mode": "loadbalance"},
            "targets": [
                {"virtual_key": "openai", "weight": 1},
                {"virtual_key": "groq", "weight": 1, "models": ["gpt-4o-mini"]},
            ],
            "providers": fleet.providers(),
        }
    )
    fleet["openai"].script = [{"status": 500}] * 20
    for _ in range(10):
        resp = await chat(gw)
        assert resp.choices[0].message.content == "hello from groq"
    assert fleet.counts()["groq"] == 10


async def test_ab_test_labels_variants_in_metrics_and_keeps_a_user_on_one(gateway_factory, fleet):
    await fleet.add("openai", "groq")
    gw = await gateway_factory(
        {
            "strategy": {"mode": "ab-test"},
            "targets": [
                {"virtual_key": "openai", "weight": 1, "label": "control"},
                {"virtual_key": "groq", "weight": 1, "label": "llama", "model": "llama-3.3-70b-versatile"},
            ],
            "providers": fleet.providers(),
        }
    )
    c = client(gw)
    for _ in range(40):
        await c.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    counts = fleet.counts()
    assert counts["openai"] > 5 and counts["groq"] > 5, counts
    text = await metrics_text(gw.admin_url)
    assert metric_value(text, "ferro_ab_requests_total", label="control") == counts["openai"]
    assert metric_value(text, "ferro_ab_requests_total", label="llama") == counts["groq"]
    fleet.reset()
    for _ in range(15):
        await c.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, user="user-42")
    assert sorted(fleet.counts().values()) == [0, 15]


async def test_least_latency_prefers_the_faster_upstream(gateway_factory, fleet):
    await fleet.add("openai", "groq")
    fleet["openai"].latency = 0.15
    gw = await gateway_factory(
        {
            "strategy": {"mode": "least-latency"},
            "targets": [{"virtual_key": "openai"}, {"virtual_key": "groq", "models": ["gpt-4o-mini"]}],
            "providers": fleet.providers(),
        }
    )
    for _ in range(2):  # untried targets go first: one request each
        await chat(gw)
    assert fleet.counts() == {"openai": 1, "groq": 1}
    for _ in range(6):
        resp = await chat(gw)
        assert resp.choices[0].message.content == "hello from groq"
    assert fleet.counts() == {"openai": 1, "groq": 7}
    health = gw.gateway.runtime.chain.terminal.health()
    assert health["openai"]["latency_p50_ms"] > health["groq"]["latency_p50_ms"]


async def test_cost_optimized_picks_the_cheaper_model_and_prices_the_answer(gateway_factory, fleet):
    await fleet.add("openai")
    gw = await gateway_factory(
        {
            "strategy": {"mode": "cost-optimized"},
            "targets": [
                {"virtual_key": "openai", "model": "gpt-4o"},
                {"virtual_key": "openai", "model": "gpt-4o-mini"},
            ],
            "providers": fleet.providers(),
        }
    )
    raw = await client(gw).chat.completions.with_raw_response.create(model="anything", messages=MESSAGES)
    assert fleet["openai"].requests[-1].body["model"] == "gpt-4o-mini"
    # the fake reports 12 prompt + 7 completion tokens; gpt-4o-mini is $0.15 / $0.60 per million
    assert float(raw.headers["x-ferro-cost-usd"]) == pytest.approx((12 * 0.15 + 7 * 0.6) / 1e6)
    text = await metrics_text(gw.admin_url)
    assert metric_value(
        text, "ferro_cost_usd_total", provider="openai", model="gpt-4o-mini"
    ) == pytest.approx(6e-6)
    # when the cheap one fails, the next cheapest serves
    fleet["openai"].script = [{"status": 500}]
    await chat(gw)
    assert [r.body["model"] for r in fleet["openai"].requests[-2:]] == ["gpt-4o-mini", "gpt-4o"]


async def test_cost_optimized_unpriced_models_are_skipped_or_last(gateway_factory, fleet):
    await fleet.add("openai")
    targets = [
        {"virtual_key": "openai", "model": "my-finetune-without-price"},
        {"virtual_key": "openai", "model": "gpt-4o"},
    ]
    gw = await gateway_factory(
        {
            "strategy": {"mode": "cost-optimized", "unpriced": "skip"},
            "targets": targets,
            "providers": fleet.providers(),
        }
    )
    await chat(gw)
    assert fleet["openai"].requests[-1].body["model"] == "gpt-4o"
    gw2 = await gateway_factory(
        {
            "strategy": {"mode": "cost-optimized", "unpriced": "allow"},
            "targets": targets,
            "providers": fleet.providers(),
        }
    )
    raw = await client(gw2).chat.completions.with_raw_response.create(model="x", messages=MESSAGES)
    assert fleet["openai"].requests[-1].body["model"] == "my-finetune-without-price"
    assert "x-ferro-cost-usd" not in raw.headers  # unknown cost is not $0
    text = await metrics_text(gw2.admin_url)
    assert metric_value(text, "ferro_unpriced_requests_total", model="my-finetune-without-price") == 1


async def test_conditional_routes_on_header_model_prefix_and_metadata(gateway_factory, fleet):
    await fleet.add("openai", "groq", "deepseek")
    gw = await gateway_factory(
        {
            "strategy": {
                "mode": "conditional",
                "conditions": [
                    {"key": "header", "name": "x-tier", "value": "free", "target_key": "groq"},
                    {"key": "model_prefix", "value": "deepseek-", "target_key": "deepseek"},
                    {"key": "metadata", "name": "team", "value": "research", "target_key": "cheap"},
                ],
            },
            "targets": [
                {"virtual_key": "openai"},
                {"virtual_key": "groq", "model": "llama-3.1-8b-instant"},
                {"virtual_key": "deepseek"},
                {"virtual_key": "groq", "label": "cheap", "model": "gemma2-9b-it"},
            ],
            "providers": fleet.providers(),
        }
    )
    c = client(gw)
    await c.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, extra_headers={"x-tier": "free"})
    assert fleet["groq"].requests[-1].body["model"] == "llama-3.1-8b-instant"
    await c.chat.completions.create(model="deepseek-chat", messages=MESSAGES)
    assert fleet["deepseek"].requests[-1].body["model"] == "deepseek-chat"
    await c.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, metadata={"team": "research"})
    assert fleet["groq"].requests[-1].body["model"] == "gemma2-9b-it"
    await c.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)  # no match: first target
    assert fleet.counts() == {"openai": 1, "groq": 2, "deepseek": 1}


async def test_content_based_routes_on_user_messages(gateway_factory, fleet):
    await fleet.add("openai", "deepseek", "mistral")
    gw = await gateway_factory(
        {
            "strategy": {
                "mode": "content-based",
                "conditions": [
                    {"key": "prompt_regex", "value": r"\bdef \w+\(", "target_key": "deepseek"},
                    {"key": "prompt_contains", "value": "BONJOUR", "target_key": "mistral"},
                ],
            },
            "targets": [
                {"virtual_key": "openai"},
                {"virtual_key": "deepseek", "model": "deepseek-chat"},
                {"virtual_key": "mistral", "model": "mistral-small-latest"},
            ],
            "providers": fleet.providers(),
        }
    )
    c = client(gw)
    code = [{"role": "system", "content": "bonjour"}, {"role": "user", "content": "fix: def add(a, b): pass"}]
    await c.chat.completions.create(model="gpt-4o-mini", messages=code)
    french = [{"role": "user", "content": [{"type": "text", "text": "Bonjour, ça va ?"}]}]
    await c.chat.completions.create(model="gpt-4o-mini", messages=french)
    await c.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    assert fleet.counts() == {"openai": 1, "deepseek": 1, "mistral": 1}


def test_a_bad_regex_is_a_config_error_with_its_path():
    with pytest.raises(ConfigError) as info:
        config_from_data(
            {
                "strategy": {
                    "mode": "content-based",
                    "conditions": [{"key": "prompt_regex", "value": "([a-z", "target_key": "openai"}],
                },
                "targets": [{"virtual_key": "openai"}],
            }
        )
    assert any(
        e.startswith("strategy.conditions[0].value: bad regular expression") for e in info.value.errors
    )


async def test_aliases_and_provider_model_addressing(gateway_factory, fleet):
    await fleet.add("openai", "groq")
    gw = await gateway_factory(
        {
            "strategy": {"mode": "single"},
            "targets": [{"virtual_key": "openai"}, {"virtual_key": "groq"}],  # targets are an allowlist
            "aliases": {"fast": "gpt-4o-mini", "llama": "groq/llama-3.3-70b-versatile"},
            "providers": fleet.providers(),
        }
    )
    await chat(gw, model="fast")
    assert fleet["openai"].requests[-1].body["model"] == "gpt-4o-mini"
    # provider/model pins the provider whatever the strategy, with the bare model name
    resp = await chat(gw, model="groq/llama-3.1-8b-instant")
    assert resp.choices[0].message.content == "hello from groq"
    assert fleet["groq"].requests[-1].body["model"] == "llama-3.1-8b-instant"
    await chat(gw, model="llama")
    assert fleet["groq"].requests[-1].body["model"] == "llama-3.3-70b-versatile"
    assert fleet.counts() == {"openai": 1, "groq": 2}


async def test_nothing_routable_is_model_not_found(gateway_factory, fleet):
    await fleet.add("openai", "groq")
    gw = await gateway_factory(
        {
            "strategy": {"mode": "fallback"},
            "targets": [{"virtual_key": "openai"}, {"virtual_key": "groq"}],
            "providers": fleet.providers(),
        }
    )
    with pytest.raises(openai.NotFoundError) as info:
        await chat(gw, model="no-such-model-anywhere")
    assert info.value.body["code"] == "model_not_found"
    assert fleet.counts() == {"openai": 0, "groq": 0}


async def test_without_targets_the_provider_serving_the_model_answers(gateway_factory, fleet):
    await fleet.add("openai", "deepseek")
    gw = await gateway_factory({"providers": fleet.providers()})
    await chat(gw, model="deepseek-chat")
    await chat(gw, model="gpt-4o-mini")
    assert fleet.counts() == {"openai": 1, "deepseek": 1}
    answered = collections.Counter(r.body["model"] for r in fleet["deepseek"].requests)
    assert answered == {"deepseek-chat": 1}
