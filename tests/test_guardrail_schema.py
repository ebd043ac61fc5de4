"""schema-guard through real listeners: the model's JSON answer (plain, in a code fence, in
prose; whole or streamed) and the request's JSON content against a JSON Schema."""

from __future__ import annotations

import openai
import pytest

from tests.test_guardrail_common import ask, rejected, start_guarded, streamed

SCHEMA = {
    "type": "object",
    "required": ["name", "age"],
    "properties": {"name": {"type": "string"}, "age": {"type": "integer", "minimum": 0}},
}


def guard(**config):
    return {"name": "schema-guard", "config": {"schema": SCHEMA, **config}}


async def test_valid_answers_pass_in_any_wrapping(gateway_factory, fake_openai):
    gw = await start_guarded(gateway_factory, fake_openai, guard())
    for text in (
        '{"name": "Ada", "age": 36}',
        'Here you go:\n```json\n{"name": "Ada", "age": 36}\n```',
        'The record is {"name": "Ada", "age": 36} as requested.',
    ):
        fake_openai.reply_text = text
        reply = await ask(gw, "give me json")
        assert reply.choices[0].message.content == text


async def test_invalid_answers_are_rejected_with_the_json_path(gateway_factory, fake_openai):
    gw = await start_guarded(gateway_factory, fake_openai, guard())
    fake_openai.reply_text = '{"name": "Ada", "age": "thirty-six"}'
    err = await rejected(gw, "json please")
    assert err.status_code == 502 and err.body["code"] == "response_rejected"
    assert "'schema_violation' (at $.age (type))" in err.body["message"]
    assert "thirty-six" not in err.body["message"]
    fake_openai.reply_text = "I cannot produce that."
    err = await rejected(gw, "json please")
    assert "'invalid_json'" in err.body["message"]


async def test_without_extract_json_prose_is_not_searched(gateway_factory, fake_openai):
    gw = await start_guarded(gateway_factory, fake_openai, guard(extract_json=False))
    fake_openai.reply_text = 'Sure: {"name": "Ada", "age": 36}'
    err = await rejected(gw, "json please")
    assert "'invalid_json'" in err.body["message"]


async def test_streamed_answer_is_judged_when_it_finishes(gateway_factory, fake_openai):
    gw = await start_guarded(gateway_factory, fake_openai, guard())
    fake_openai.reply_text = '{"name": "Ada", "age": 36}'
    assert await streamed(gw) == fake_openai.reply_text
    fake_openai.reply_text = '{"name": "Ada", "age": -1}'
    with pytest.raises(openai.APIError) as info:
        await streamed(gw)
    assert info.value.body["code"] == "response_rejected" and "minimum" in info.value.body["message"]


async def test_request_json_content_on_input(gateway_factory, fake_openai):
    gw = await start_guarded(gateway_factory, fake_openai, guard(apply_to="input"))
    await ask(gw, '{"name": "Ada", "age": 36}')
    err = await rejected(gw, '{"name": "Ada"}')
    assert err.status_code == 400 and "(at $ (required))" in err.body["message"]
    assert len(fake_openai.requests) == 1


async def test_warn_lets_an_invalid_answer_through(gateway_factory, fake_openai):
    gw = await start_guarded(gateway_factory, fake_openai, guard(action="warn"))
    fake_openai.reply_text = "[]"
    reply = await ask(gw, "json")
    assert reply.choices[0].message.content == "[]"
