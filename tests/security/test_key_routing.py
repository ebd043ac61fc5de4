"""Keys go where they belong: a client's own key (BYO) only reaches the provider it was meant
for, and configured `targets:` are an allowlist (issue 13, item 5).

Fake OpenAI-compatible upstreams on loopback record the Authorization header of every
request they get; providers are pointed at them through `base_url` overrides.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from ferro_proxy.server import Running
from tests.fakes.fleet import Fleet

CLIENT_KEY = "tgp_v1_client-own-together-key"


@pytest.fixture
async def fleet() -> AsyncIterator[Fleet]:
    f = Fleet()
    yield f
    await f.stop()


async def chat(gw: Running, model: str, key: str | None = None) -> tuple[int, dict[str, Any]]:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    body = {"model": model, "messages": [{"role": "user", "content": "hi"}]}
    async with (
        aiohttp.ClientSession() as s,
        s.post(gw.proxy_url + "/v1/chat/completions", json=body, headers=headers) as r,
    ):
        return r.status, await r.json()


def auth_seen(fleet: Fleet, name: str) -> list[str | None]:
    return [r.headers.get("Authorization") for r in fleet[name].requests]


def keyless(fleet: Fleet, *names: str) -> dict[str, Any]:
    """`providers:` entries with a base URL but no key of their own (BYO-only providers)."""
    return {name: {"base_url": fleet[name].base_url} for name in names}


async def test_byo_key_is_never_handed_to_a_fallback_provider(gateway_factory, fleet):
    await fleet.add("together", "fireworks", "deepseek")
    fleet["together"].script.append({"status": 500})
    providers = {**fleet.providers(), **keyless(fleet, "together", "fireworks")}
    gw = await gateway_factory(
        {
            "strategy": {"mode": "fallback"},
            "targets": [
                {"virtual_key": "together", "models": ["llama-*"]},
                {"virtual_key": "fireworks", "models": ["llama-*"]},
                {"virtual_key": "deepseek", "models": ["llama-*"]},
            ],
            "providers": providers,
        }
    )
    status, body = await chat(gw, "llama-3.3-70b", key=CLIENT_KEY)
    assert status == 200, body
    assert body["choices"][0]["message"]["content"] == "hello from deepseek"
    assert auth_seen(fleet, "together") == [f"Bearer {CLIENT_KEY}"]  # the first choice: meant for it
    assert fleet.counts()["fireworks"] == 0  # no key of its own: skipped, not given the client's
    assert auth_seen(fleet, "deepseek") == ["Bearer sk-upstream-deepseek"]  # its own key only


async def test_skipped_target_is_named_in_the_error(gateway_factory, fleet):
    await fleet.add("together", "fireworks")
    fleet["together"].script.append({"status": 500})
    gw = await gateway_factory(
        {
            "strategy": {"mode": "fallback"},
            "targets": [
                {"virtual_key": "together", "models": ["*"]},
                {"virtual_key": "fireworks", "models": ["*"]},
            ],
            "providers": keyless(fleet, "together", "fireworks"),
        }
    )
    status, body = await chat(gw, "meta-llama/Llama-3.3-70B-Instruct-Turbo", key=CLIENT_KEY)
    assert status == 502
    message = body["error"]["message"]
    assert "together -> 502" in message
    assert "fireworks (skipped: no key of its own" in message
    assert CLIENT_KEY not in message
    assert fleet.counts() == {"together": 1, "fireworks": 0}


async def test_provider_model_addressing_sends_the_byo_key_to_that_provider_only(gateway_factory, fleet):
    await fleet.add("together", "fireworks")
    gw = await gateway_factory(
        {
            "strategy": {"mode": "fallback"},
            "targets": [
                {"virtual_key": "together", "models": ["*"]},
                {"virtual_key": "fireworks", "models": ["*"]},
            ],
            "providers": keyless(fleet, "together", "fireworks"),
        }
    )
    status, body = await chat(gw, "fireworks/accounts/me/models/tuned", key="fw_client_key")
    assert status == 200, body
    assert auth_seen(fleet, "fireworks") == ["Bearer fw_client_key"]
    assert fleet["fireworks"].requests[0].body["model"] == "accounts/me/models/tuned"
    assert fleet.counts()["together"] == 0


async def test_env_provider_outside_targets_is_never_used(gateway_factory, fleet):
    await fleet.add("openai", "groq")
    env = {"GROQ_API_KEY": "gsk_env_groq_key", "GROQ_BASE_URL": fleet["groq"].base_url}
    gw = await gateway_factory(
        {"targets": [{"virtual_key": "openai"}], "providers": fleet.providers()}, env=env
    )
    gw_env_only = await gateway_factory(
        {"targets": [{"virtual_key": "openai"}], "providers": {"openai": fleet.providers()["openai"]}},
        env=env,
    )
    for g in (gw, gw_env_only):
        for model in ("groq/llama-3.3-70b-versatile", "llama-3.3-70b-versatile"):
            status, body = await chat(g, model)
            assert status == 404, (model, body)
            assert body["error"]["code"] == "model_not_found"
    assert fleet.counts() == {"openai": 0, "groq": 0}


@pytest.mark.parametrize("mode", ["single", "fallback", "loadbalance"])
async def test_model_no_target_serves_is_404_before_any_upstream_call(gateway_factory, fleet, mode):
    await fleet.add("openai")
    gw = await gateway_factory(
        {"strategy": {"mode": mode}, "targets": [{"virtual_key": "openai"}], "providers": fleet.providers()}
    )
    status, body = await chat(gw, "claude-3-5-sonnet-20241022")
    assert status == 404
    assert body["error"]["code"] == "model_not_found"
    assert "claude-3-5-sonnet-20241022" in body["error"]["message"]
    assert fleet.counts() == {"openai": 0}
    status, _ = await chat(gw, "gpt-4o-mini")  # what the target does serve still works
    assert status == 200


async def test_models_globs_and_star(gateway_factory, fleet):
    await fleet.add("together", "ollama")
    gw = await gateway_factory(
        {
            "strategy": {"mode": "fallback"},
            "targets": [{"virtual_key": "together", "models": ["llama-*", "qwen-?b"]}],
            "providers": fleet.providers(),
        }
    )
    assert (await chat(gw, "llama-3-8b"))[0] == 200
    assert (await chat(gw, "qwen-7b"))[0] == 200
    status, body = await chat(gw, "mistral-7b")
    assert status == 404 and body["error"]["code"] == "model_not_found"
    assert fleet.counts() == {"together": 2, "ollama": 0}

    star = await gateway_factory(
        {"targets": [{"virtual_key": "together", "models": ["*"]}], "providers": fleet.providers()}
    )
    assert (await chat(star, "my-org/anything-at-all"))[0] == 200
    assert fleet["together"].requests[-1].body["model"] == "my-org/anything-at-all"


async def test_rewrite_target_narrowed_by_models(gateway_factory, fleet):
    await fleet.add("openai", "groq")
    gw = await gateway_factory(
        {
            "strategy": {"mode": "fallback"},
            "targets": [
                {"virtual_key": "openai"},
                {"virtual_key": "groq", "model": "llama-3.3-70b-versatile", "models": ["gpt-4o*"]},
            ],
            "providers": fleet.providers(),
        }
    )
    fleet["openai"].script.append({"status": 500})
    status, body = await chat(gw, "gpt-4o-mini")
    assert status == 200 and body["choices"][0]["message"]["content"] == "hello from groq"
    assert fleet["groq"].requests[-1].body["model"] == "llama-3.3-70b-versatile"
    status, body = await chat(gw, "claude-3-5-sonnet-20241022")
    assert status == 404
    assert fleet.counts() == {"openai": 1, "groq": 1}


async def test_without_config_the_single_env_provider_serves_every_model(gateway_factory, fleet):
    await fleet.add("openai")
    gw = await gateway_factory(
        None, env={"OPENAI_API_KEY": "sk-env-openai", "OPENAI_BASE_URL": fleet["openai"].base_url}
    )
    for model in ("claude-3-5-sonnet-20241022", "my-company/finetune-7b"):
        status, body = await chat(gw, model)
        assert status == 200, body
    assert [r.body["model"] for r in fleet["openai"].requests] == [
        "claude-3-5-sonnet-20241022",
        "my-company/finetune-7b",
    ]


async def test_models_list_shows_only_what_the_allowlist_serves(gateway_factory, fleet):
    await fleet.add("openai", "groq")
    env = {"GROQ_API_KEY": "gsk_env_groq_key", "GROQ_BASE_URL": fleet["groq"].base_url}
    gw = await gateway_factory(
        {
            "targets": [{"virtual_key": "openai", "models": ["my-finetune", "ft-*"]}],
            "aliases": {"fast": "gpt-4o-mini", "llama": "groq/llama-3.3-70b-versatile"},
            "providers": {"openai": fleet.providers()["openai"]},
        },
        env=env,
    )
    async with aiohttp.ClientSession() as s, s.get(gw.proxy_url + "/v1/models") as r:
        assert r.status == 200
        data = (await r.json())["data"]
    owners = {m["owned_by"] for m in data}
    ids = {m["id"] for m in data}
    assert "groq" not in owners
    assert "openai" in owners
    assert {"my-finetune", "fast"} <= ids
    assert "llama" not in ids and "ft-*" not in ids
    assert fleet.counts() == {"openai": 0, "groq": 0}
