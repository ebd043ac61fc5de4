"""The eleven further OpenAI-compatible providers: each enabled by its environment, called
at its own API path with `Authorization: Bearer <key>`, addressed as `provider/model` (the
prefix stripped before the call), JSON and stream, usage reaching the client. Cloudflare
and Databricks compose their URLs (account path, `/serving-endpoints`) and are left off,
with a warning naming the missing variable, when they cannot."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import urlsplit

import openai
import pytest

from ferro_proxy.config import ConfigError
from providers.registry import load_builtin_providers
from tests.fakes.openai_at_path import FakeOpenAIAt

PROVIDERS_COVERED = {
    "openrouter",
    "cerebras",
    "sambanova",
    "deepinfra",
    "novita",
    "moonshot",
    "qwen",
    "nvidia-nim",
    "cloudflare",
    "databricks",
    "ollama-cloud",
}


@dataclass(frozen=True)
class Case:
    name: str
    path: str  # where the provider's OpenAI-compatible API lives upstream
    model: str  # as the upstream knows it
    env: Callable[[str, str], dict[str, str]]  # (fake root URL, key) -> environment
    composed: bool = False  # the gateway builds the path (not the default base URL's)


def _simple(name: str, path: str, model: str) -> Case:
    var = name.upper().replace("-", "_")
    return Case(name, path, model, lambda root, key: {f"{var}_API_KEY": key, f"{var}_BASE_URL": root + path})


CASES = [
    _simple("openrouter", "/api/v1", "deepseek/deepseek-chat-v3-0324"),
    _simple("cerebras", "/v1", "gpt-oss-120b"),
    _simple("sambanova", "/v1", "Meta-Llama-3.3-70B-Instruct"),
    _simple("deepinfra", "/v1/openai", "meta-llama/Llama-3.3-70B-Instruct-Turbo"),
    _simple("novita", "/v3/openai", "meta-llama/llama-3.1-8b-instruct"),
    _simple("moonshot", "/v1", "kimi-k2-0905-preview"),
    _simple("qwen", "/compatible-mode/v1", "qwen-plus"),
    _simple("nvidia-nim", "/v1", "meta/llama-3.3-70b-instruct"),
    Case(
        "cloudflare",
        "/client/v4/accounts/acc-7f3e/ai/v1",
        "@cf/meta/llama-3.1-8b-instruct-fp8",
        lambda root, key: {
            "CLOUDFLARE_API_KEY": key,
            "CLOUDFLARE_ACCOUNT_ID": "acc-7f3e",
            "CLOUDFLARE_BASE_URL": root + "/client/v4",
        },
        composed=True,
    ),
    Case(
        "databricks",
        "/serving-endpoints",
        "databricks-meta-llama-3-3-70b-instruct",
        lambda root, key: {"DATABRICKS_TOKEN": key, "DATABRICKS_HOST": root},
        composed=True,
    ),
    Case(
        "ollama-cloud",
        "/v1",
        "gpt-oss:120b",
        lambda root, key: {"OLLAMA_API_KEY": key, "OLLAMA_CLOUD_BASE_URL": root + "/v1"},
    ),
]


def _client(gw) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(api_key="placeholder", base_url=gw.proxy_url + "/v1", max_retries=0)


async def _upstream(path: str) -> FakeOpenAIAt:
    return await FakeOpenAIAt(prefix=path).start()


def test_every_provider_of_the_module_has_a_case():
    assert {c.name for c in CASES} == PROVIDERS_COVERED
    specs = load_builtin_providers()
    for case in CASES:
        if not case.composed:  # the path the fake serves is the real API's
            assert urlsplit(specs[case.name].default_base_url).path == case.path, case.name


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
async def test_chat_json_and_stream(gateway_factory, case: Case):
    fake = await _upstream(case.path)
    try:
        key = f"key-{case.name}-0123456789"
        gw = await gateway_factory(env=case.env(fake.root_url, key))
        client = _client(gw)
        resp = await client.chat.completions.create(
            model=f"{case.name}/{case.model}", messages=[{"role": "user", "content": "q"}]
        )
        assert resp.choices[0].message.content == fake.reply_text
        assert (resp.usage.prompt_tokens, resp.usage.completion_tokens) == (12, 7)
        sent = fake.requests[-1]
        assert sent.path == case.path + "/chat/completions"
        assert sent.headers["Authorization"] == f"Bearer {key}"
        assert sent.body["model"] == case.model, "the provider prefix is stripped before the call"

        stream = await client.chat.completions.create(
            model=f"{case.name}/{case.model}",
            messages=[{"role": "user", "content": "q"}],
            stream=True,
            stream_options={"include_usage": True},
        )
        chunks = [c async for c in stream]
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        assert text == fake.reply_text
        assert chunks[-1].usage is not None and chunks[-1].usage.total_tokens == 19
        sent = fake.requests[-1]
        assert sent.path == case.path + "/chat/completions"
        assert sent.body["stream"] is True and sent.body["model"] == case.model
        assert sent.headers["Authorization"] == f"Bearer {key}"
    finally:
        await fake.stop()


async def test_stream_without_usage_request_is_still_metered(gateway_factory):
    fake = await _upstream("/api/v1")
    try:
        gw = await gateway_factory(env=CASES[0].env(fake.root_url, "key-openrouter-0123456789"))
        stream = await _client(gw).chat.completions.create(
            model="openrouter/deepseek/deepseek-chat-v3-0324",
            messages=[{"role": "user", "content": "q"}],
            stream=True,
        )
        chunks = [c async for c in stream]
        assert all(c.usage is None for c in chunks), "the client did not ask for the usage chunk"
        assert fake.requests[-1].body["stream_options"] == {"include_usage": True}
    finally:
        await fake.stop()


def _with(capability: str) -> list[Case]:
    specs = load_builtin_providers()
    return [c for c in CASES if capability in specs[c.name].capabilities]


@pytest.mark.parametrize("case", _with("embeddings"), ids=lambda c: c.name)
async def test_embeddings(gateway_factory, case: Case):
    fake = await _upstream(case.path)
    try:
        gw = await gateway_factory(env=case.env(fake.root_url, "key-0123456789"))
        resp = await _client(gw).embeddings.create(model=f"{case.name}/embed-model", input=["a", "b"])
        assert len(resp.data) == 2 and resp.usage.prompt_tokens == 6
        sent = fake.requests[-1]
        assert sent.path == case.path + "/embeddings" and sent.body["model"] == "embed-model"
    finally:
        await fake.stop()


@pytest.mark.parametrize("case", _with("completions"), ids=lambda c: c.name)
async def test_completions(gateway_factory, case: Case):
    fake = await _upstream(case.path)
    try:
        gw = await gateway_factory(env=case.env(fake.root_url, "key-0123456789"))
        resp = await _client(gw).completions.create(model=f"{case.name}/{case.model}", prompt="Once")
        assert resp.choices[0].text == "Once upon a time" and resp.usage.total_tokens == 9
        assert fake.requests[-1].path == case.path + "/completions"
    finally:
        await fake.stop()


@pytest.mark.parametrize(
    ("name", "alias", "model"),
    [
        ("qwen", "DASHSCOPE_API_KEY", "qwen-plus"),
        ("nvidia-nim", "NVIDIA_API_KEY", "meta/llama-3.3-70b-instruct"),
    ],
)
async def test_the_sdk_key_names_also_enable(gateway_factory, name, alias, model):
    case = next(c for c in CASES if c.name == name)
    fake = await _upstream(case.path)
    try:
        var = name.upper().replace("-", "_")
        gw = await gateway_factory(env={alias: "sdk-key-0123456789", f"{var}_BASE_URL": fake.base_url})
        await _client(gw).chat.completions.create(
            model=f"{name}/{model}", messages=[{"role": "user", "content": "q"}]
        )
        assert fake.requests[-1].headers["Authorization"] == "Bearer sdk-key-0123456789"
    finally:
        await fake.stop()


async def test_bare_model_names_route_by_prefix(gateway_factory):
    cf = await _upstream("/client/v4/accounts/acc-1/ai/v1")
    db = await _upstream("/serving-endpoints")
    try:
        gw = await gateway_factory(
            env={
                "CLOUDFLARE_API_KEY": "cf-key-0123456789",
                "CLOUDFLARE_ACCOUNT_ID": "acc-1",
                "CLOUDFLARE_BASE_URL": cf.root_url + "/client/v4",
                "DATABRICKS_TOKEN": "dapi-0123456789",
                "DATABRICKS_HOST": db.root_url,
            }
        )
        client = _client(gw)
        await client.chat.completions.create(
            model="@cf/qwen/qwq-32b", messages=[{"role": "user", "content": "q"}]
        )
        await client.chat.completions.create(
            model="databricks-claude-sonnet-4", messages=[{"role": "user", "content": "q"}]
        )
        assert [r.body["model"] for r in cf.requests] == ["@cf/qwen/qwq-32b"]
        assert [r.body["model"] for r in db.requests] == ["databricks-claude-sonnet-4"]
    finally:
        await cf.stop()
        await db.stop()


@pytest.mark.parametrize(
    ("name", "env", "missing"),
    [
        ("cloudflare", {"CLOUDFLARE_API_KEY": "cf-key-0123456789"}, "CLOUDFLARE_ACCOUNT_ID"),
        ("databricks", {"DATABRICKS_TOKEN": "dapi-0123456789"}, "DATABRICKS_HOST"),
    ],
)
async def test_a_provider_that_cannot_form_its_url_is_not_enabled(
    gateway_factory, caplog, name, env, missing
):
    fake = await _upstream("/v1")
    try:
        caplog.set_level(logging.WARNING, logger="ferro_proxy.providers")
        gw = await gateway_factory(
            env={**env, "CEREBRAS_API_KEY": "k-0123456789", "CEREBRAS_BASE_URL": fake.base_url}
        )
        assert name not in gw.gateway.providers and "cerebras" in gw.gateway.providers
        warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
        assert any(name in m and missing in m for m in warnings), warnings
        models = await _client(gw).models.list()
        assert all(m.owned_by != name for m in models.data)
    finally:
        await fake.stop()


@pytest.mark.parametrize(
    ("name", "field"),
    [("cloudflare", "providers.cloudflare.account_id"), ("databricks", "providers.databricks.base_url")],
)
async def test_configured_without_its_url_part_is_refused_at_start(gateway_factory, name, field):
    with pytest.raises(ConfigError) as info:
        await gateway_factory(config={"providers": {name: {"api_key": "k-0123456789"}}})
    assert any(field in e for e in info.value.errors)


async def test_cloudflare_account_from_config_and_databricks_bare_host(gateway_factory):
    fake = await _upstream("/client/v4/accounts/from-config/ai/v1")
    try:
        gw = await gateway_factory(
            config={
                "providers": {
                    "cloudflare": {
                        "api_key": "cf-key-0123456789",
                        "account_id": "from-config",
                        "base_url": fake.root_url + "/client/v4",
                    }
                }
            }
        )
        await _client(gw).chat.completions.create(
            model="cloudflare/@cf/meta/llama-3.1-8b-instruct-fp8", messages=[{"role": "user", "content": "q"}]
        )
        assert fake.requests[-1].path == "/client/v4/accounts/from-config/ai/v1/chat/completions"
    finally:
        await fake.stop()
    # The Databricks SDKs accept a host without a scheme: https is assumed.
    gw = await gateway_factory(
        env={"DATABRICKS_TOKEN": "dapi-0123456789", "DATABRICKS_HOST": "adb-1.example.net"}
    )
    assert (
        gw.gateway.providers["databricks"].settings.base_url == "https://adb-1.example.net/serving-endpoints"
    )


async def test_openrouter_attribution_headers_only_when_configured(gateway_factory):
    fake = await _upstream("/api/v1")
    try:
        gw = await gateway_factory(env=CASES[0].env(fake.root_url, "key-openrouter-0123456789"))
        await _client(gw).chat.completions.create(
            model="openrouter/openai/gpt-4o-mini", messages=[{"role": "user", "content": "q"}]
        )
        plain = {k.lower() for k in fake.requests[-1].headers}
        assert "http-referer" not in plain and "x-title" not in plain

        gw = await gateway_factory(
            config={
                "providers": {
                    "openrouter": {
                        "api_key": "key-openrouter-0123456789",
                        "base_url": fake.base_url,
                        "headers": {"HTTP-Referer": "https://shop.example", "X-Title": "Shop"},
                    }
                }
            }
        )
        await _client(gw).chat.completions.create(
            model="openrouter/openai/gpt-4o-mini",
            messages=[{"role": "user", "content": "q"}],
            extra_headers={"X-Title": "client-chosen"},
        )
        sent = fake.requests[-1].headers
        assert (sent["HTTP-Referer"], sent["X-Title"]) == ("https://shop.example", "Shop")
    finally:
        await fake.stop()
