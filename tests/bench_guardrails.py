"""Benchmark: latency the seven guardrails add to a 4 KB chat request.

    python -m tests.bench_guardrails [--requests 2000]

One run, one process: a fake OpenAI upstream and two gateways on loopback listeners, one
without plugins and one with all seven guardrails (input and output screening where they
support it). Requests alternate between the two so drift hits both alike; the report is
p50/p99 client latency of each and the difference. Target: under 1 ms added at p50.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import statistics
import time

import aiohttp
import orjson

from ferro_proxy.config import config_from_data
from ferro_proxy.server import start
from tests.fakes.openai_upstream import FakeOpenAI

PARAGRAPH = (
    "Our quarterly review covered the migration of the billing service to the new cluster, "
    "the latency regressions we saw in the search API after the index rebuild, and the plan "
    "for retiring the legacy reporting jobs. The team agreed to add load tests before each "
    "release and to document the rollback steps for every schema change. "
)
SYSTEM = "You are a concise assistant that writes structured summaries for engineering managers."


def chat_body(size: int = 4096) -> dict:
    text = (PARAGRAPH * (size // len(PARAGRAPH) + 1))[: size - len(SYSTEM)]
    return {
        "model": "gpt-4o-mini",
        "max_tokens": 400,
        "messages": [
            {"role": "system", "content": SYSTEM},
            {"role": "user", "content": "Summarize: " + text},
        ],
    }


GUARDRAILS = [
    {"name": "word-filter", "config": {"blocked_words": ["darn", "heck", "top secret"], "apply_to": "both"}},
    {"name": "max-token", "config": {"max_tokens": 4000, "max_messages": 50, "max_input_length": 50000}},
    {"name": "pii-redact", "config": {"apply_to": "both"}},
    {"name": "secret-scan", "config": {"apply_to": "both"}},
    {"name": "prompt-shield"},
    {
        "name": "schema-guard",
        "config": {
            "schema": {
                "type": "object",
                "required": ["summary"],
                "properties": {"summary": {"type": "string"}},
            }
        },
    },
    {
        "name": "regex-guard",
        "config": {
            "apply_to": "both",
            "rules": [
                {"name": "ticket", "pattern": r"\bJIRA-\d+\b", "action": "redact"},
                {"name": "drop_table", "pattern": r"drop\s+table", "ignore_case": True},
            ],
        },
    },
]


def screening_cost(rounds: int = 500) -> tuple[float, float]:
    """(min, median) ms the seven guardrails spend screening one request and its answer,
    timed in-process: less sensitive than the end-to-end figure to a busy machine."""
    import copy

    from ferro_proxy.chain import build_filters
    from ferro_proxy.exchange import Exchange, Reply
    from ferro_proxy.gateway import Gateway
    from filters.guardrails.text import input_segments

    filters = build_filters(config_from_data({"plugins": GUARDRAILS}).plugins, Gateway(env={}))
    body = chat_body()
    answer = orjson.dumps(
        {"choices": [{"index": 0, "message": {"role": "assistant", "content": '{"summary": "ok"}'}}]}
    )
    samples = []
    for _ in range(rounds):
        ex = Exchange("bench", "chat", "POST", "/v1/chat/completions", {}, body=copy.deepcopy(body))
        reply = Reply(200, raw=answer)
        began = time.perf_counter()
        for f in filters:
            if f.screens_input:
                found = f.check_input(ex, input_segments("chat", ex.body))
                if found:
                    f.act(ex, found, "input")
            if f.screens_output:
                f.screen_reply(ex, reply)
        samples.append((time.perf_counter() - began) * 1000)
    return min(samples), statistics.median(samples)


def _pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * p))]


async def main(requests: int) -> int:
    logging.disable(logging.WARNING)
    fake = await FakeOpenAI(
        reply_text='{"summary": "Billing moved; search latency fixed; add load tests."}'
    ).start()
    env = {"OPENAI_API_KEY": "sk-bench-upstream", "OPENAI_BASE_URL": fake.base_url}
    plain = await start(
        config_from_data({}, env=env), listen="127.0.0.1:0", admin_listen="127.0.0.1:0", env=env
    )
    guarded = await start(
        config_from_data({"plugins": GUARDRAILS}, env=env),
        listen="127.0.0.1:0",
        admin_listen="127.0.0.1:0",
        env=env,
    )
    payload = orjson.dumps(chat_body())
    headers = {"Content-Type": "application/json", "Authorization": "Bearer sk-bench"}
    timings: dict[str, list[float]] = {"plain": [], "guarded": []}
    try:
        async with aiohttp.ClientSession() as session:

            async def once(url: str) -> float:
                began = time.perf_counter()
                async with session.post(url + "/v1/chat/completions", data=payload, headers=headers) as resp:
                    await resp.read()
                    if resp.status != 200:
                        raise RuntimeError(f"{url} answered {resp.status}: {await resp.text()}")
                return time.perf_counter() - began

            for _ in range(200):  # warm up pools, regex caches, allocators
                await once(plain.proxy_url)
                await once(guarded.proxy_url)
            for _ in range(requests):
                timings["plain"].append(await once(plain.proxy_url))
                timings["guarded"].append(await once(guarded.proxy_url))
    finally:
        await plain.drain_and_stop(0.5)
        await guarded.drain_and_stop(0.5)
        await fake.stop()
    ms = {k: [v * 1000 for v in vals] for k, vals in timings.items()}
    print(f"4 KB chat request ({len(payload)} bytes), {requests} requests each, sequential, loopback")
    for name in ("plain", "guarded"):
        vals = ms[name]
        print(
            f"  {name:8s} p50 {_pct(vals, 0.5):7.3f} ms   p99 {_pct(vals, 0.99):7.3f} ms   mean {statistics.fmean(vals):7.3f} ms"
        )
    added50 = _pct(ms["guarded"], 0.5) - _pct(ms["plain"], 0.5)
    added99 = _pct(ms["guarded"], 0.99) - _pct(ms["plain"], 0.99)
    print(f"  added by all seven guardrails: p50 {added50:.3f} ms, p99 {added99:.3f} ms (target p50 < 1 ms)")
    low, mid = screening_cost()
    print(f"  screening CPU per request in-process: min {low:.3f} ms, median {mid:.3f} ms")
    return 0 if added50 < 1.0 else 1


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=2000)
    raise SystemExit(asyncio.run(main(parser.parse_args().requests)))
