"""The Anthropic Messages ingress routed to Anthropic itself: the client's native body goes
upstream (with the filters' changes carried over) and the native answer/stream comes back
untouched, so thinking blocks and cache_control work through the gateway."""

from __future__ import annotations

import copy
from collections.abc import AsyncIterator, Iterator
from typing import Any, ClassVar

import aiohttp
import anthropic
import pytest

from ferro_proxy.chain import FILTERS, Filter, Next
from ferro_proxy.exchange import Exchange, Reply, StreamChunk
from tests.fakes.anthropic_upstream import FakeAnthropic

MODEL = "claude-sonnet-4-20250514"
WEATHER_TOOL = {
    "name": "get_weather",
    "description": "Current weather for a city",
    "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    "cache_control": {"type": "ephemeral"},
}
# A conversation using what only the native API knows: cached system and tool blocks, a
# thinking block (with its signature) in an earlier assistant turn, top_k, thinking.
RICH_REQUEST: dict[str, Any] = {
    "model": MODEL,
    "max_tokens": 2048,
    "system": [
        {"type": "text", "text": "You are a weather bot."},
        {"type": "text", "text": "Long reference text. " * 20, "cache_control": {"type": "ephemeral"}},
    ],
    "messages": [
        {
            "role": "user",
            "content": [{"type": "text", "text": "Hi!", "cache_control": {"type": "ephemeral"}}],
        },
        {
            "role": "assistant",
            "content": [
                {"type": "thinking", "thinking": "Greet back.", "signature": "sig-earlier"},
                {"type": "text", "text": "Hello! Ask me about the weather."},
            ],
        },
        {"role": "user", "content": "Is my secret plan to visit Oslo a good idea?"},
    ],
    "thinking": {"type": "enabled", "budget_tokens": 1024},
    "tools": [WEATHER_TOOL],
}


class RedactSecrets(Filter):
    """A test filter that edits the OpenAI view: redacts a word in the last message and
    caps max_tokens, the kinds of rewrite guardrails and limit filters make."""

    name = "test-redact-secret"
    type = "transform"
    description = "test only: redacts 'secret' in the last message, caps max_tokens"

    async def on_request(self, ex: Exchange) -> None:
        assert ex.body is not None
        last = ex.body["messages"][-1]
        last["content"] = last["content"].replace("secret", "[redacted]")
        ex.body["max_tokens"] = min(ex.body.get("max_tokens") or 512, 512)
        return None


class AppendTurn(Filter):
    """A test filter that appends a user turn, as an agent loop or prompt filter might."""

    name = "test-append-turn"
    type = "transform"
    description = "test only: appends a user message"

    async def on_request(self, ex: Exchange) -> None:
        assert ex.body is not None
        ex.body["messages"].append({"role": "user", "content": "Answer in French."})
        return None


class ReplayNative(Filter):
    """A test filter that answers from a stored native Messages answer, as a cache would."""

    name = "test-replay-native"
    type = "transform"
    description = "test only: answers with a stored Messages reply"
    stored: ClassVar[dict[str, Any]] = {}

    async def handle(self, ex: Exchange, next: Next) -> Reply:
        if not ex.stream:
            return Reply(200, data=self.stored["json"])

        async def events() -> AsyncIterator[StreamChunk]:
            for raw in self.stored["events"]:
                yield StreamChunk(raw, "event")

        return Reply(200, stream=events())


@pytest.fixture
def test_filters() -> Iterator[None]:
    """Register the test filters for one test only, so no other test sees them."""
    added = {f.name: f for f in (RedactSecrets, AppendTurn, ReplayNative) if f.name not in FILTERS}
    FILTERS.update(added)
    yield
    for name in added:
        FILTERS.pop(name, None)


@pytest.fixture
async def fake_anthropic() -> AsyncIterator[FakeAnthropic]:
    fake = await FakeAnthropic().start()
    yield fake
    await fake.stop()


def _env(fake: FakeAnthropic) -> dict[str, str]:
    return {"ANTHROPIC_API_KEY": fake.api_key, "ANTHROPIC_BASE_URL": fake.host_url}


@pytest.fixture
async def gateway(gateway_factory, fake_anthropic: FakeAnthropic):
    return await gateway_factory(env=_env(fake_anthropic))


@pytest.fixture
def claude(gateway) -> anthropic.AsyncAnthropic:
    return anthropic.AsyncAnthropic(api_key="sk-placeholder", base_url=gateway.proxy_url, max_retries=0)


async def test_native_body_reaches_anthropic_unchanged(claude, fake_anthropic: FakeAnthropic) -> None:
    request = copy.deepcopy(RICH_REQUEST)
    message = await claude.messages.create(
        **request,
        extra_body={"top_k": 5},
        extra_headers={"anthropic-beta": "interleaved-thinking-2025-05-14"},
    )
    sent = fake_anthropic.last
    assert sent.body == {**RICH_REQUEST, "top_k": 5}
    assert sent.headers["x-api-key"] == fake_anthropic.api_key  # the gateway's key, not the client's
    assert sent.headers["anthropic-version"] == anthropic._constants.ANTHROPIC_API_VERSION
    assert sent.headers["anthropic-beta"] == "interleaved-thinking-2025-05-14"
    assert "sk-placeholder" not in str(sent.headers)

    assert [b.type for b in message.content] == ["thinking", "text"]
    assert message.content[0].signature == "sig-fake-1"
    assert message.content[1].text == fake_anthropic.reply_text
    assert message.id == "msg_01FakeAnthropic"
    assert message.usage.cache_read_input_tokens == 5  # cache_control arrived upstream


async def test_native_stream_is_passed_through_byte_for_byte(gateway, fake_anthropic: FakeAnthropic) -> None:
    body = {**copy.deepcopy(RICH_REQUEST), "stream": True}
    async with aiohttp.ClientSession() as http:
        headers = {"x-api-key": "sk-placeholder", "anthropic-version": "2023-06-01"}
        async with http.post(gateway.proxy_url + "/v1/messages", json=body, headers=headers) as resp:
            assert resp.status == 200
            received = await resp.read()
    assert fake_anthropic.last.body == body
    assert received == b"".join(fake_anthropic.sent_events)
    assert b"thinking_delta" in received and b"signature_delta" in received


async def test_stream_helper_gets_thinking_and_text(claude, fake_anthropic: FakeAnthropic) -> None:
    texts = []
    async with claude.messages.stream(**copy.deepcopy(RICH_REQUEST)) as stream:
        async for text in stream.text_stream:
            texts.append(text)
        final = await stream.get_final_message()
    assert "".join(texts) == fake_anthropic.reply_text
    assert [b.type for b in final.content] == ["thinking", "text"]
    assert final.content[0].thinking == "Let me think step by step."
    assert final.content[0].signature == "sig-fake-1"
    assert final.usage.output_tokens == 9


async def test_tool_use_round_trip_natively(claude, fake_anthropic: FakeAnthropic) -> None:
    fake_anthropic.tool_use = {"name": "get_weather", "input": {"city": "Oslo"}}
    messages: list[dict[str, Any]] = [{"role": "user", "content": "Weather in Oslo?"}]
    first = await claude.messages.create(model=MODEL, max_tokens=300, messages=messages, tools=[WEATHER_TOOL])
    assert first.stop_reason == "tool_use"
    call = first.content[-1]
    assert (call.name, call.input) == ("get_weather", {"city": "Oslo"})

    messages.append(
        {"role": "assistant", "content": [b.model_dump(exclude_none=True) for b in first.content]}
    )
    messages.append(
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": call.id, "content": "-3C, snow"}]}
    )
    async with claude.messages.stream(
        model=MODEL, max_tokens=300, messages=messages, tools=[WEATHER_TOOL]
    ) as stream:
        final = await stream.get_final_message()
    assert final.stop_reason == "end_turn"
    assert final.content[0].text == fake_anthropic.reply_text
    assert fake_anthropic.last.body == {
        "model": MODEL,
        "max_tokens": 300,
        "messages": messages,
        "tools": [WEATHER_TOOL],
        "stream": True,
    }


async def test_filter_changes_are_carried_into_the_native_body(
    gateway_factory, fake_anthropic, test_filters
) -> None:
    running = await gateway_factory({"plugins": [{"name": "test-redact-secret"}]}, env=_env(fake_anthropic))
    claude = anthropic.AsyncAnthropic(api_key="k", base_url=running.proxy_url, max_retries=0)
    await claude.messages.create(**copy.deepcopy(RICH_REQUEST))
    sent = fake_anthropic.last.body
    expected = copy.deepcopy(RICH_REQUEST)
    expected["max_tokens"] = 512
    expected["messages"][-1]["content"] = "Is my [redacted] plan to visit Oslo a good idea?"
    assert sent == expected  # the untouched turns, system, tools and thinking stay verbatim


async def test_turns_appended_by_a_filter_follow_the_verbatim_ones(
    gateway_factory, fake_anthropic, test_filters
) -> None:
    running = await gateway_factory({"plugins": [{"name": "test-append-turn"}]}, env=_env(fake_anthropic))
    claude = anthropic.AsyncAnthropic(api_key="k", base_url=running.proxy_url, max_retries=0)
    await claude.messages.create(**copy.deepcopy(RICH_REQUEST))
    sent = fake_anthropic.last.body
    assert sent["messages"] == [*RICH_REQUEST["messages"], {"role": "user", "content": "Answer in French."}]
    assert sent["system"] == RICH_REQUEST["system"] and sent["thinking"] == RICH_REQUEST["thinking"]


async def test_clients_own_key_is_forwarded_when_none_is_configured(gateway_factory, fake_anthropic) -> None:
    running = await gateway_factory({"providers": {"anthropic": {"base_url": fake_anthropic.host_url}}})
    by_header = anthropic.AsyncAnthropic(
        api_key=None, base_url=running.proxy_url, max_retries=0, default_headers={"x-api-key": "sk-ant-own-1"}
    )
    await by_header.messages.create(model=MODEL, max_tokens=10, messages=[{"role": "user", "content": "hi"}])
    assert fake_anthropic.last.headers["x-api-key"] == "sk-ant-own-1"
    by_bearer = anthropic.AsyncAnthropic(auth_token="sk-ant-own-2", base_url=running.proxy_url, max_retries=0)
    await by_bearer.messages.create(model=MODEL, max_tokens=10, messages=[{"role": "user", "content": "hi"}])
    assert fake_anthropic.last.headers["x-api-key"] == "sk-ant-own-2"
    assert "Authorization" not in fake_anthropic.last.headers


async def test_usage_from_native_answers_reaches_metrics(claude, gateway, fake_anthropic) -> None:
    await claude.messages.create(**copy.deepcopy(RICH_REQUEST))  # 21 input + 5 cache read, 9 output
    async with claude.messages.stream(**copy.deepcopy(RICH_REQUEST)) as stream:
        await stream.get_final_message()
    async with aiohttp.ClientSession() as http:
        async with http.get(gateway.admin_url + "/metrics") as resp:
            text = await resp.text()
    lines = [line for line in text.splitlines() if line.startswith("ferro_tokens_total{") and MODEL in line]
    values = {
        ("input" if 'direction="input"' in line else "output"): float(line.rsplit(" ", 1)[1])
        for line in lines
    }
    assert values == {"input": 52.0, "output": 18.0}


async def test_upstream_errors_keep_anthropics_shape(claude, fake_anthropic: FakeAnthropic) -> None:
    fake_anthropic.script.append(
        {"status": 429, "retry_after": 9, "message": "Number of request tokens exceeded"}
    )
    with pytest.raises(anthropic.RateLimitError) as info:
        await claude.messages.create(model=MODEL, max_tokens=10, messages=[{"role": "user", "content": "hi"}])
    assert info.value.body["error"]["type"] == "rate_limit_error"
    assert "request tokens exceeded" in info.value.body["error"]["message"]
    assert info.value.response.headers["retry-after"] == "9"

    with pytest.raises(anthropic.BadRequestError) as bad:  # the fake validates like the real API
        await claude.messages.create(
            model=MODEL,
            max_tokens=10,
            messages=[
                {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "nope", "content": "x"}]}
            ],
        )
    assert bad.value.body["error"]["type"] == "invalid_request_error"
    assert "tool_use_id" in bad.value.body["error"]["message"]


async def test_error_event_mid_stream_reaches_the_client(claude, fake_anthropic: FakeAnthropic) -> None:
    fake_anthropic.script.append({"error_event_after": 4})
    stream = await claude.messages.create(
        model=MODEL, max_tokens=10, messages=[{"role": "user", "content": "hi"}], stream=True
    )
    with pytest.raises(anthropic.APIStatusError) as info:
        async for _ in stream:
            pass
    assert info.value.body["error"]["type"] == "overloaded_error"
    assert "Overloaded" in info.value.body["error"]["message"]


async def test_count_tokens_is_forwarded_natively(claude, fake_anthropic: FakeAnthropic) -> None:
    request = copy.deepcopy(RICH_REQUEST)
    del request["max_tokens"]
    counted = await claude.messages.count_tokens(**request)
    sent = fake_anthropic.last
    assert sent.path == "/v1/messages/count_tokens"
    assert sent.body == request
    assert counted.input_tokens > 40


async def test_native_answers_replayed_by_a_filter_are_not_translated_again(
    gateway_factory, claude, fake_anthropic, test_filters
) -> None:
    first = await claude.messages.create(**copy.deepcopy(RICH_REQUEST))
    async with claude.messages.stream(**copy.deepcopy(RICH_REQUEST)) as stream:
        await stream.get_final_message()
    ReplayNative.stored.update(json=first.model_dump(), events=list(fake_anthropic.sent_events))
    calls = len(fake_anthropic.requests)

    running = await gateway_factory({"plugins": [{"name": "test-replay-native"}]}, env=_env(fake_anthropic))
    replaying = anthropic.AsyncAnthropic(api_key="k", base_url=running.proxy_url, max_retries=0)
    again = await replaying.messages.create(**copy.deepcopy(RICH_REQUEST))
    assert again.model_dump() == first.model_dump()
    async with replaying.messages.stream(**copy.deepcopy(RICH_REQUEST)) as stream:
        replayed = await stream.get_final_message()
    assert [b.type for b in replayed.content] == ["thinking", "text"]
    assert replayed.content[1].text == fake_anthropic.reply_text
    assert len(fake_anthropic.requests) == calls
