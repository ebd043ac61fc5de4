"""Client input never becomes a metric label the gateway did not resolve.

Thousands of random model names (refused 404 by a `targets:` allowlist, or answered by a
lone provider that takes any name) and random pass-through paths must add no series beyond
the one `other` label per family; models the gateway knows keep their own label.
"""

from __future__ import annotations

import asyncio
import uuid
from collections import defaultdict

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from ferro_proxy.server import Running

MESSAGES = [{"role": "user", "content": "hi"}]
RANDOM_MODELS = 5000


def series(text: str) -> dict[str, set[tuple[tuple[str, str], ...]]]:
    """Family name -> the label sets it exposes (histogram buckets folded into one series)."""
    out: dict[str, set[tuple[tuple[str, str], ...]]] = defaultdict(set)
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = tuple(sorted((k, v) for k, v in sample.labels.items() if k not in ("le", "quantile")))
            out[family.name].add(labels)
    return out


async def metrics_text(session: aiohttp.ClientSession, gw: Running) -> str:
    async with session.get(gw.admin_url + "/metrics") as resp:
        return await resp.text()


async def chat(session: aiohttp.ClientSession, gw: Running, model: str) -> int:
    async with session.post(
        gw.proxy_url + "/v1/chat/completions", json={"model": model, "messages": MESSAGES}
    ) as r:
        await r.read()
        return r.status


async def passthrough(session: aiohttp.ClientSession, gw: Running, path: str) -> int:
    async with session.get(gw.proxy_url + "/v1/" + path) as r:
        await r.read()
        return r.status


async def flood(
    session: aiohttp.ClientSession, gw: Running, models: list[str], paths: list[str]
) -> list[int]:
    gate = asyncio.Semaphore(32)

    async def one(coro) -> int:
        async with gate:
            return await coro

    jobs = [one(chat(session, gw, m)) for m in models] + [one(passthrough(session, gw, p)) for p in paths]
    return await asyncio.gather(*jobs)


def random_names(n: int) -> list[str]:
    return [f"model-{uuid.uuid4().hex}" for _ in range(n)]


def random_paths(n: int) -> list[str]:
    return [f"things-{uuid.uuid4().hex[:12]}/{uuid.uuid4().hex[:8]}" for _ in range(n)]


def assert_no_new_series(before: str, after: str) -> None:
    old, new = series(before), series(after)
    grown = {
        name: sorted(new[name] - old.get(name, set())) for name in new if new[name] - old.get(name, set())
    }
    assert grown == {}


async def test_random_models_refused_by_the_allowlist_add_no_series(gateway_factory, fake_openai) -> None:
    gw = await gateway_factory(
        {
            "targets": [{"virtual_key": "openai", "models": ["gpt-4o-mini", "my-local-*"]}],
            "aliases": {"fast": "gpt-4o-mini"},
        },
        env={"OPENAI_API_KEY": "sk-test-upstream-key", "OPENAI_BASE_URL": fake_openai.base_url},
    )
    async with aiohttp.ClientSession() as session:
        assert await chat(session, gw, "gpt-4o-mini") == 200  # resolved: its own label
        assert await chat(session, gw, "fast") == 200
        assert await chat(session, gw, "my-local-llama") == 200  # served by a glob: not a name we know
        warm = random_names(1)
        assert await chat(session, gw, warm[0]) == 404
        await passthrough(session, gw, random_paths(1)[0])
        before = await metrics_text(session, gw)

        names, paths = random_names(RANDOM_MODELS), random_paths(300)
        statuses = await flood(session, gw, names, paths)
        assert set(statuses[:RANDOM_MODELS]) == {404}
        after = await metrics_text(session, gw)

    assert_no_new_series(before, after)
    assert len(after) < len(before) * 1.2
    assert warm[0] not in after and not any(n in after for n in names[:50])
    assert not any(p.split("/")[0] in after for p in paths[:50])
    requests = series(after)["ferro_requests"]
    models = {dict(labels).get("model") for labels in requests}
    assert {"gpt-4o-mini", "other"} <= models
    assert "my-local-llama" not in models
    assert {dict(labels)["endpoint"] for labels in requests} <= {"chat", "passthrough"}


async def test_a_lone_provider_serving_any_name_still_counts_them_as_other(gateway, fake_openai) -> None:
    async with aiohttp.ClientSession() as session:
        assert await chat(session, gateway, "gpt-4o-mini") == 200
        assert await chat(session, gateway, random_names(1)[0]) == 200  # the upstream takes any name
        before = await metrics_text(session, gateway)
        names = random_names(1000)
        assert set(await flood(session, gateway, names, [])) == {200}
        after = await metrics_text(session, gateway)

    assert_no_new_series(before, after)
    assert not any(n in after for n in names[:50])
    fams = series(after)
    for family in ("ferro_requests", "ferro_tokens", "ferro_unpriced_requests"):
        models = {dict(labels).get("model") for labels in fams[family]}
        assert "other" in models, family
    tokens = {dict(labels)["model"] for labels in fams["ferro_tokens"]}
    assert "gpt-4o-mini" in tokens


async def test_an_upstreams_error_codes_do_not_become_labels(gateway_factory) -> None:
    from aiohttp import web

    async def refuse(request: web.Request) -> web.Response:
        code = uuid.uuid4().hex
        return web.json_response(
            {"error": {"message": "no", "type": "invalid_request_error", "code": code}}, status=400
        )

    app = web.Application()
    app.router.add_post("/v1/chat/completions", refuse)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    base = f"http://127.0.0.1:{runner.addresses[0][1]}/v1"
    try:
        gw = await gateway_factory(env={"OPENAI_API_KEY": "sk-test-labels-upstream", "OPENAI_BASE_URL": base})
        async with aiohttp.ClientSession() as session:
            for _ in range(50):
                assert await chat(session, gw, "gpt-4o-mini") == 400
            text = await metrics_text(session, gw)
    finally:
        await runner.cleanup()
    outcomes = {dict(labels).get("outcome") for labels in series(text)["ferro_router_attempts"]}
    assert outcomes == {"http_400"}
