"""The bundled model catalog, its override, cost accounting and the /v1/models enrichment."""

from __future__ import annotations

import json

import openai
import pytest

from providers.catalog import load_catalog
from tests.fakes.fleet import Fleet, get_json, metric_value, metrics_text

BUILT_IN = (
    "openai anthropic gemini vertex-ai bedrock cohere mistral groq deepseek together fireworks "
    "perplexity xai ollama replicate hugging-face ai21 azure-openai azure-foundry"
).split()
MESSAGES = [{"role": "user", "content": "hi"}]


@pytest.fixture
async def fleet():
    f = Fleet()
    yield f
    await f.stop()


def test_every_built_in_provider_has_models_with_sane_entries():
    catalog = load_catalog()
    for provider in BUILT_IN:
        models = catalog.models_for(provider)
        assert len(models) >= 2, provider
        chat = [catalog.get(provider, m) for m in models if catalog.get(provider, m).mode == "chat"]
        assert chat and all(info.context_window for info in chat), provider
    for info in catalog:
        assert info.mode in ("chat", "embedding", "image", "completion"), info
        if info.input_per_million is not None:
            assert info.input_per_million >= 0 and info.output_per_million is not None, info
            if info.cached_input_per_million is not None:
                assert info.cached_input_per_million <= info.input_per_million, info
        if info.max_output_tokens and info.context_window:
            assert info.max_output_tokens <= info.context_window, info
    # local models have no price: their cost is unknown, not zero
    assert all(not catalog.get("ollama", m).priced for m in catalog.models_for("ollama"))
    assert catalog.get("anthropic", "claude-sonnet-4-20250514").cost(1_000_000, 0) == pytest.approx(3.0)


def test_an_override_file_replaces_and_adds_entries(tmp_path):
    path = tmp_path / "catalog.json"
    path.write_text(
        json.dumps(
            {
                "models": {
                    "openai/gpt-4o-mini": {
                        "mode": "chat",
                        "input_per_million": 1.0,
                        "output_per_million": 2.0,
                    },
                    "groq/my-new-model": {"mode": "chat", "context_window": 8192},
                }
            }
        )
    )
    catalog = load_catalog(str(path))
    assert catalog.get("openai", "gpt-4o-mini").input_per_million == 1.0
    assert catalog.get("groq", "my-new-model").context_window == 8192
    assert catalog.get("openai", "gpt-4o") is not None  # the rest of the bundled catalog stays


async def test_cost_header_and_metric_follow_the_override(gateway_factory, fleet, tmp_path):
    await fleet.add("openai")
    path = tmp_path / "prices.json"
    path.write_text(
        json.dumps({"openai/gpt-4o-mini": {"input_per_million": 10.0, "output_per_million": 20.0}})
    )
    gw = await gateway_factory({"providers": fleet.providers(), "model_catalog": str(path)})
    async with openai.AsyncOpenAI(api_key="sk-x", base_url=gw.proxy_url + "/v1", max_retries=0) as c:
        raw = await c.chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=MESSAGES)
    expected = (12 * 10.0 + 7 * 20.0) / 1e6
    assert float(raw.headers["x-ferro-cost-usd"]) == pytest.approx(expected)
    text = await metrics_text(gw.admin_url)
    assert metric_value(
        text, "ferro_cost_usd_total", provider="openai", model="gpt-4o-mini"
    ) == pytest.approx(expected)


async def test_models_endpoint_is_enriched_from_the_catalog(gateway_factory, fleet):
    await fleet.add("openai", "groq")
    gw = await gateway_factory(
        {
            "providers": fleet.providers(),
            "targets": [{"virtual_key": "openai"}, {"virtual_key": "groq", "models": ["my-groq-finetune"]}],
            "strategy": {"mode": "fallback"},
            "aliases": {"fast": "groq/llama-3.1-8b-instant", "smart": "gpt-4o"},
        }
    )
    body = await get_json(gw.proxy_url + "/v1/models")
    by_id = {(m["owned_by"], m["id"]): m for m in body["data"]}
    mini = by_id[("openai", "gpt-4o-mini")]
    assert mini["context_window"] == 128000 and mini["input_per_million"] == 0.15
    assert "tools" in mini["capabilities"]
    assert ("groq", "my-groq-finetune") in by_id  # declared by a target
    assert by_id[("groq", "llama-3.3-70b-versatile")]["mode"] == "chat"
    fast = by_id[("ferro-proxy", "fast")]
    assert fast["alias_of"] == "groq/llama-3.1-8b-instant" and fast["input_per_million"] == 0.05
    assert by_id[("ferro-proxy", "smart")]["output_per_million"] == 10.0
