"""What every guardrail shares, driven through real listeners with the OpenAI SDK: block on
input (400) and output (502, and an SSE error event mid-stream), warn and log (the request
proceeds; header, metric, log line, hits in ex.metadata), redaction of what the upstream
receives, the endpoints screened, stages, and config errors reported with their path.

Also home of the helpers the other tests/test_guardrail_*.py files import."""

from __future__ import annotations

import logging
from typing import Any

import aiohttp
import openai
import pytest

from ferro_proxy.chain import Filter, register_filter
from ferro_proxy.config import ConfigError, config_from_data

# ------------------------------------------------------------------ helpers


def env_for(fake: Any) -> dict[str, str]:
    return {"OPENAI_API_KEY": "sk-test-upstream-key", "OPENAI_BASE_URL": fake.base_url}


async def start_guarded(gateway_factory: Any, fake: Any, *plugins: dict[str, Any]) -> Any:
    return await gateway_factory({"plugins": list(plugins)}, env=env_for(fake))


def client(running: Any) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(api_key="sk-placeholder", base_url=running.proxy_url + "/v1", max_retries=0)


async def ask(running: Any, content: str, **kw: Any) -> Any:
    return await client(running).chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": content}], **kw
    )


async def rejected(running: Any, content: str, **kw: Any) -> openai.APIStatusError:
    with pytest.raises(openai.APIStatusError) as info:
        await ask(running, content, **kw)
    return info.value


async def streamed(running: Any, content: str = "hi") -> str:
    stream = await client(running).chat.completions.create(
        model="gpt-4o-mini", stream=True, messages=[{"role": "user", "content": content}]
    )
    return "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])


def sent_text(fake: Any) -> str:
    """The last user message the fake upstream received."""
    return fake.requests[-1].body["messages"][-1]["content"]


async def metric_lines(running: Any, name: str = "ferro_guardrail_hits_total") -> list[str]:
    async with aiohttp.ClientSession() as session, session.get(running.admin_url + "/metrics") as resp:
        text = await resp.text()
    return [line for line in text.splitlines() if line.startswith(name + "{")]


SEEN_METADATA: list[dict[str, Any]] = []


@register_filter
class MetadataProbe(Filter):
    """Outermost test filter: records ex.metadata after the chain ran."""

    name = "test-guardrail-probe"
    type = "logging"

    async def handle(self, ex, next):
        try:
            return await next(ex)
        finally:
            SEEN_METADATA.append(dict(ex.metadata))


PROBE = {"name": "test-guardrail-probe"}


def word(action: str = "block", apply_to: str = "input", **extra: Any) -> dict[str, Any]:
    return {
        "name": "word-filter",
        "config": {"blocked_words": ["forbidden"], "action": action, "apply_to": apply_to, **extra},
    }


# ------------------------------------------------------------------ block


async def test_input_block_is_a_400_naming_filter_and_rule_and_never_reaches_upstream(
    gateway_factory, fake_openai
):
    gw = await start_guarded(gateway_factory, fake_openai, word())
    err = await rejected(gw, "this is forbidden text")
    assert err.status_code == 400
    body = err.body
    assert body["code"] == "request_rejected" and body["type"] == "invalid_request_error"
    assert "word-filter" in body["message"] and "blocked_word" in body["message"]
    assert "forbidden" not in body["message"]
    assert fake_openai.requests == []
    ok = await ask(gw, "this is fine")
    assert ok.choices[0].message.content == fake_openai.reply_text


async def test_output_block_is_a_502_response_rejected(gateway_factory, fake_openai):
    fake_openai.reply_text = "the answer is forbidden here"
    gw = await start_guarded(gateway_factory, fake_openai, word(apply_to="output"))
    err = await rejected(gw, "forbidden words in the prompt are fine: only output is screened")
    assert err.status_code == 502
    assert err.body["code"] == "response_rejected" and "word-filter" in err.body["message"]
    assert "the answer is" not in str(err.body)


async def test_streamed_output_block_ends_with_an_error_event_before_the_match(gateway_factory, fake_openai):
    fake_openai.reply_text = "one two three forbidden four five"
    gw = await start_guarded(gateway_factory, fake_openai, word(apply_to="output"))
    stream = await client(gw).chat.completions.create(
        model="gpt-4o-mini", stream=True, messages=[{"role": "user", "content": "hi"}]
    )
    got: list[str] = []
    with pytest.raises(openai.APIError) as info:
        async for chunk in stream:
            if chunk.choices:
                got.append(chunk.choices[0].delta.content or "")
    assert info.value.body["code"] == "response_rejected"
    assert "forbidden" not in "".join(got), "the blocked word must never reach the client"


async def test_raw_stream_ends_with_error_event_and_no_done(gateway_factory, fake_openai):
    fake_openai.reply_text = "a forbidden answer"
    gw = await start_guarded(gateway_factory, fake_openai, word(apply_to="output"))
    body = {"model": "gpt-4o-mini", "stream": True, "messages": [{"role": "user", "content": "hi"}]}
    async with aiohttp.ClientSession() as session:
        async with session.post(gw.proxy_url + "/v1/chat/completions", json=body) as resp:
            raw = (await resp.read()).decode()
    assert "event: error" in raw and "response_rejected" in raw
    assert "[DONE]" not in raw and "forbidden" not in raw


# ------------------------------------------------------------------ warn / log


async def test_warn_proceeds_with_header_metric_log_and_hits(gateway_factory, fake_openai, caplog):
    SEEN_METADATA.clear()
    gw = await start_guarded(gateway_factory, fake_openai, PROBE, word(action="warn"))
    with caplog.at_level(logging.INFO, logger="ferro_proxy.guardrail"):
        raw = await client(gw).chat.completions.with_raw_response.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "a forbidden thing"}]
        )
    assert raw.http_response.status_code == 200
    assert raw.headers["x-ferro-guardrail-warnings"] == "word-filter:blocked_word"
    assert sent_text(fake_openai) == "a forbidden thing", "warn must not change the request"
    lines = await metric_lines(gw)
    assert any(
        'action="warn"' in line and 'rule="blocked_word"' in line and line.endswith(" 1.0") for line in lines
    )
    records = [r for r in caplog.records if r.name == "ferro_proxy.guardrail"]
    assert records and records[0].levelno == logging.WARNING
    assert records[0].fields["filter"] == "word-filter" and records[0].fields["rules"] == ["blocked_word"]
    assert "forbidden" not in str(records[0].fields)
    assert SEEN_METADATA[-1]["guardrail_hits"] == [
        {"filter": "word-filter", "rule": "blocked_word", "action": "warn", "stage": "input"}
    ]


async def test_log_action_proceeds_quietly_at_info(gateway_factory, fake_openai, caplog):
    gw = await start_guarded(gateway_factory, fake_openai, word(action="log"))
    with caplog.at_level(logging.INFO, logger="ferro_proxy.guardrail"):
        raw = await client(gw).chat.completions.with_raw_response.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "forbidden"}]
        )
    assert raw.http_response.status_code == 200
    assert "x-ferro-guardrail-warnings" not in raw.headers
    records = [r for r in caplog.records if r.name == "ferro_proxy.guardrail"]
    assert [r.levelno for r in records] == [logging.INFO]
    assert any('action="log"' in line for line in await metric_lines(gw))


# ------------------------------------------------------------------ redact and endpoints


async def test_redaction_rewrites_what_the_upstream_receives(gateway_factory, fake_openai):
    gw = await start_guarded(gateway_factory, fake_openai, word(action="redact"))
    await ask(gw, "one Forbidden word")
    assert sent_text(fake_openai) == "one ********* word"


async def test_content_parts_completions_and_embeddings_are_screened(gateway_factory, fake_openai):
    gw = await start_guarded(gateway_factory, fake_openai, word(action="redact"))
    c = client(gw)
    await c.chat.completions.create(
        model="gpt-4o-mini",
        messages=[
            {"role": "system", "content": "forbidden in system too"},
            {"role": "user", "content": [{"type": "text", "text": "a forbidden part"}]},
        ],
    )
    sent = fake_openai.requests[-1].body["messages"]
    assert sent[0]["content"] == "********* in system too"
    assert sent[1]["content"][0]["text"] == "a ********* part"
    await c.completions.create(model="gpt-3.5-turbo-instruct", prompt=["forbidden", "fine"])
    assert fake_openai.requests[-1].body["prompt"] == ["*********", "fine"]
    await c.embeddings.create(model="text-embedding-3-small", input="forbidden fruit")
    assert fake_openai.requests[-1].body["input"] == "********* fruit"


async def test_output_redaction_on_a_whole_answer(gateway_factory, fake_openai):
    fake_openai.reply_text = "this is Forbidden stuff"
    gw = await start_guarded(gateway_factory, fake_openai, word(action="redact", apply_to="both"))
    reply = await ask(gw, "hello")
    assert reply.choices[0].message.content == "this is ********* stuff"
    assert reply.usage.total_tokens == 19, "the rest of the answer is kept"


async def test_stage_after_request_screens_output_only(gateway_factory, fake_openai):
    fake_openai.reply_text = "forbidden"
    plugin = {**word(apply_to="both"), "stage": "after_request"}
    gw = await start_guarded(gateway_factory, fake_openai, plugin)
    err = await rejected(gw, "forbidden input passes")
    assert err.status_code == 502 and len(fake_openai.requests) == 1


# ------------------------------------------------------------------ config errors


def _build_errors(plugins: list[dict[str, Any]]) -> str:
    from ferro_proxy.chain import build_filters
    from ferro_proxy.gateway import Gateway

    cfg = config_from_data({"plugins": plugins})
    with pytest.raises(ConfigError) as info:
        build_filters(cfg.plugins, Gateway(env={}))
    return str(info.value)


@pytest.mark.parametrize(
    ("plugin", "expected"),
    [
        (
            {"name": "regex-guard", "config": {"rules": [{"name": "x", "pattern": "a(b"}]}},
            "plugins[0].config: rules[0].pattern: bad regular expression",
        ),
        ({"name": "max-token", "config": {"action": "redact", "max_messages": 3}}, "cannot redact"),
        ({"name": "max-token", "config": {"apply_to": "output", "max_messages": 3}}, "screens input only"),
        (
            {"name": "word-filter", "config": {"action": "shout", "blocked_words": ["x"]}},
            "plugins[0].config.action",
        ),
        (
            {"name": "word-filter", "config": {"blocked_words": ["x"], "colour": 1}},
            "plugins[0].config.colour",
        ),
        (
            {"name": "schema-guard", "config": {"schema": {"type": "nonsense"}}},
            "schema: not a valid JSON Schema",
        ),
        (
            {"name": "secret-scan", "config": {"patterns": [{"name": "x", "pattern": "("}]}},
            "patterns[0].pattern",
        ),
        ({"name": "pii-redact", "config": {"entities": ["dna"]}}, "unknown entity 'dna'"),
        ({"name": "prompt-shield", "config": {"threshold": 0}}, "threshold"),
    ],
)
def test_bad_guardrail_config_is_reported_with_its_path(plugin, expected):
    assert expected in _build_errors([plugin])
