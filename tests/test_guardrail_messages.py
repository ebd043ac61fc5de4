"""Guardrails on the Anthropic Messages ingress with Anthropic as the upstream: the request
redaction reaches the native body, and native answers (JSON and the event stream, word by
word) are redacted or blocked in Anthropic's own shapes."""

from __future__ import annotations

from collections.abc import AsyncIterator

import anthropic
import pytest

from tests.fakes.anthropic_upstream import FakeAnthropic

MODEL = "claude-sonnet-4-20250514"
PII_BOTH = {"name": "pii-redact", "config": {"apply_to": "both"}}


@pytest.fixture
async def fake_anthropic() -> AsyncIterator[FakeAnthropic]:
    fake = await FakeAnthropic().start()
    yield fake
    await fake.stop()


async def _claude(gateway_factory, fake: FakeAnthropic, *plugins) -> anthropic.AsyncAnthropic:
    env = {"ANTHROPIC_API_KEY": fake.api_key, "ANTHROPIC_BASE_URL": fake.host_url}
    running = await gateway_factory({"plugins": list(plugins)}, env=env)
    return anthropic.AsyncAnthropic(api_key="sk-placeholder", base_url=running.proxy_url, max_retries=0)


async def test_native_request_and_answer_are_redacted(gateway_factory, fake_anthropic):
    fake_anthropic.reply_text = "Reach Bob at bob@example.com or 555-123-4567 today."
    claude = await _claude(gateway_factory, fake_anthropic, PII_BOTH)
    msg = await claude.messages.create(
        model=MODEL,
        max_tokens=100,
        system="Support bot.",
        messages=[{"role": "user", "content": "My card is 4111 1111 1111 1111, mail me at a@b.io"}],
    )
    sent = fake_anthropic.last.body["messages"][-1]["content"]
    sent_text = sent if isinstance(sent, str) else sent[0]["text"]
    assert sent_text == "My card is [CREDIT_CARD], mail me at [EMAIL]"
    assert msg.content[0].text == "Reach Bob at [EMAIL] or [PHONE] today."


async def test_native_stream_is_redacted_across_text_deltas(gateway_factory, fake_anthropic):
    fake_anthropic.reply_text = "Call 555 123 4567 or write x@example.org now."
    claude = await _claude(gateway_factory, fake_anthropic, PII_BOTH)
    async with claude.messages.stream(
        model=MODEL, max_tokens=100, messages=[{"role": "user", "content": "contact?"}]
    ) as stream:
        text = "".join([t async for t in stream.text_stream])
        final = await stream.get_final_message()
    assert text == "Call [PHONE] or write [EMAIL] now."
    assert final.content[0].text == text


async def test_native_stream_block_ends_with_an_anthropic_error_event(gateway_factory, fake_anthropic):
    fake_anthropic.reply_text = "the launch code is forbidden knowledge"
    word = {"name": "word-filter", "config": {"blocked_words": ["forbidden"], "apply_to": "output"}}
    claude = await _claude(gateway_factory, fake_anthropic, word)
    seen: list[str] = []
    with pytest.raises(anthropic.APIError) as info:
        async with claude.messages.stream(
            model=MODEL, max_tokens=100, messages=[{"role": "user", "content": "hi"}]
        ) as stream:
            async for t in stream.text_stream:
                seen.append(t)
    assert "word-filter" in str(info.value) and "forbidden" not in "".join(seen)
