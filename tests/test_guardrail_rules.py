"""word-filter, regex-guard and max-token through real listeners: true positives and near
misses (a word inside another word, case), per-rule actions, and each max-token limit."""

from __future__ import annotations

import openai
import pytest

from tests.test_guardrail_common import ask, client, rejected, sent_text, start_guarded, streamed


async def test_word_filter_whole_words_and_case(gateway_factory, fake_openai):
    plugin = {"name": "word-filter", "config": {"blocked_words": ["ass", "top secret"], "action": "redact"}}
    gw = await start_guarded(gateway_factory, fake_openai, plugin)
    await ask(gw, "Kick ASS, this is Top Secret.")
    assert sent_text(fake_openai) == "Kick ***, this is **********."
    near = "the class assignment is a bass passage; top secretary"
    await ask(gw, near)
    assert sent_text(fake_openai) == near, "a word inside another word is not a match"


async def test_word_filter_case_sensitive_and_substring_mode(gateway_factory, fake_openai):
    plugin = {
        "name": "word-filter",
        "config": {"blocked_words": ["Foo"], "case_sensitive": True, "whole_word": False, "action": "redact"},
    }
    gw = await start_guarded(gateway_factory, fake_openai, plugin)
    await ask(gw, "Foobar foo FOO")
    assert sent_text(fake_openai) == "***bar foo FOO"


async def test_regex_guard_rules_with_their_own_actions(gateway_factory, fake_openai):
    plugin = {
        "name": "regex-guard",
        "config": {
            "action": "warn",
            "rules": [
                {"name": "ticket", "pattern": r"\bJIRA-\d+\b", "action": "redact", "replacement": "[TICKET]"},
                {"name": "drop_table", "pattern": r"drop\s+table", "ignore_case": True, "action": "block"},
                {"name": "internal_host", "pattern": r"\b[a-z]+\.corp\.example\b"},
            ],
        },
    }
    gw = await start_guarded(gateway_factory, fake_openai, plugin)
    err = await rejected(gw, "please DROP  TABLE users")
    assert (
        err.status_code == 400
        and "'drop_table'" in err.body["message"]
        and "users" not in err.body["message"]
    )
    raw = await client(gw).chat.completions.with_raw_response.create(
        model="gpt-4o-mini",
        messages=[{"role": "user", "content": "see JIRA-123 on build.corp.example"}],
    )
    assert raw.headers["x-ferro-guardrail-warnings"] == "regex-guard:internal_host"
    assert sent_text(fake_openai) == "see [TICKET] on build.corp.example"
    await ask(gw, "JIRA-ish notes; a dropped table leg; corp.example")
    assert sent_text(fake_openai) == "JIRA-ish notes; a dropped table leg; corp.example"


async def test_regex_guard_redacts_a_streamed_match_split_across_chunks(gateway_factory, fake_openai):
    fake_openai.reply_text = "Your order number is ORD 4821 77 and it ships today."
    plugin = {
        "name": "regex-guard",
        "config": {
            "apply_to": "output",
            "rules": [{"name": "order", "pattern": r"ORD \d{4} \d{2}", "action": "redact"}],
        },
    }
    gw = await start_guarded(gateway_factory, fake_openai, plugin)
    assert await streamed(gw) == "Your order number is [REDACTED:order] and it ships today."


async def test_max_token_limits(gateway_factory, fake_openai):
    plugin = {"name": "max-token", "config": {"max_tokens": 500, "max_messages": 3, "max_input_length": 100}}
    gw = await start_guarded(gateway_factory, fake_openai, plugin)
    c = client(gw)
    err = await rejected(gw, "hi", max_tokens=501)
    assert (
        err.status_code == 400
        and "'max_tokens'" in err.body["message"]
        and "limit 500" in err.body["message"]
    )
    err = await rejected(gw, "hi", max_completion_tokens=9000)
    assert "'max_tokens'" in err.body["message"]
    await ask(gw, "hi", max_tokens=500)  # at the limit: fine
    four = [{"role": "user", "content": "x"}] * 4
    with pytest.raises(openai.BadRequestError) as info:
        await c.chat.completions.create(model="gpt-4o-mini", messages=four)
    assert "'max_messages'" in info.value.body["message"] and "4 messages" in info.value.body["message"]
    err = await rejected(gw, "y" * 101)
    assert "'max_input_length'" in err.body["message"] and "101 characters" in err.body["message"]
    await ask(gw, "y" * 100)
    assert len(fake_openai.requests) == 2


async def test_max_token_counts_estimated_tokens(gateway_factory, fake_openai):
    plugin = {"name": "max-token", "config": {"max_input_length": 10, "length_unit": "tokens"}}
    gw = await start_guarded(gateway_factory, fake_openai, plugin)
    await ask(gw, "z" * 40)  # about 10 tokens
    err = await rejected(gw, "z" * 41)
    assert "about 11 tokens" in err.body["message"]


async def test_regex_guard_literal_precheck_respects_inline_flags(gateway_factory, fake_openai):
    plugin = {
        "name": "regex-guard",
        "config": {"action": "redact", "rules": [{"name": "plan", "pattern": r"(?i)\bsecret\s+plan\b"}]},
    }
    gw = await start_guarded(gateway_factory, fake_openai, plugin)
    await ask(gw, "the SECRET  Plan is out")
    assert sent_text(fake_openai) == "the [REDACTED:plan] is out"
