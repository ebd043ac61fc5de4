"""`response-cache`: an exact-match cache of successful answers.

The key covers everything that changes the answer: the endpoint, the ingress, the caller
(gateway key id, else a hash of the client's own key), and the whole request body except
transport-only fields (`stream`, `stream_options`, `user`, `store`, `metadata`), with the
model resolved through `aliases:`. One canonical form is stored, the non-streamed answer:
a streamed miss is assembled into it once the stream ended cleanly, and a hit for a
streaming client is replayed as `chat.completion.chunk` (or `text_completion`) events.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import AsyncIterator
from typing import Any, Literal

import msgspec
import orjson

from ferro_proxy.chain import Filter, Next, register_filter
from ferro_proxy.config import Base, Duration, parse_duration
from ferro_proxy.errors import GatewayError
from ferro_proxy.exchange import Exchange, Reply, StreamChunk, Usage
from filters.cache_backends import CacheBackend, MemoryCache, RedisCache
from filters.limits_backends import ThrottledWarning, WriteBehind, caller_identity, check_backend
from providers.translate_anthropic import native_reply_to_openai

log = logging.getLogger("ferro_proxy.cache")

# Fields that change how an answer is delivered or attributed, not what it says.
_NOT_IN_KEY = frozenset({"stream", "stream_options", "user", "store", "metadata"})
TTL_HEADER = "x-ferro-cache-ttl"
RESULT_HEADER = "x-ferro-cache"


class ResponseCacheConfig(Base):
    backend: Literal["memory", "redis"] = "memory"
    dsn: str | None = None  # redis://host:6379/0 for backend: redis
    max_age: Duration = 300.0
    max_entries: int = 10_000  # memory backend
    max_entry_bytes: int = 1_048_576  # larger answers are not stored
    endpoints: list[Literal["chat", "completions", "embeddings"]] = msgspec.field(
        default_factory=lambda: ["chat", "completions", "embeddings"]
    )
    key_prefix: str = "ferro:cache:"
    timeout: Duration = 0.5  # per Redis operation; a slower cache counts as a miss


@register_filter
class ResponseCache(Filter):
    name = "response-cache"
    type = "transform"
    description = "Exact-match cache of successful answers (memory LRU or shared Redis); replays streams"
    Config = ResponseCacheConfig

    def __init__(self, config: ResponseCacheConfig, gateway: Any, plugin: Any = None) -> None:
        super().__init__(config, gateway, plugin)
        if config.max_age <= 0:
            raise ValueError("max_age must be > 0")
        if config.max_entries < 1:
            raise ValueError("max_entries must be >= 1")
        if config.max_entry_bytes < 1:
            raise ValueError("max_entry_bytes must be >= 1")
        check_backend(config.backend, config.dsn, {"redis": ("redis", "rediss", "unix")})
        self.endpoints = frozenset(config.endpoints)
        self.backend: CacheBackend | None = None
        counter = gateway.metrics.counter(
            "ferro_cache_requests_total", "Response cache lookups by result", ["result"]
        )
        self._count = {r: counter.labels(r) for r in ("hit", "miss", "bypass", "error")}
        self._warn = ThrottledWarning(log, "response cache")
        self._writes = WriteBehind(lambda exc: self._warn(exc, "answers are not being stored"))

    async def start(self) -> None:
        c = self.config
        if c.backend == "redis":
            assert c.dsn is not None
            self.backend = RedisCache(c.dsn, c.key_prefix, c.timeout)
        else:
            self.backend = MemoryCache(c.max_entries)

    async def close(self) -> None:
        await self._writes.drain()
        if self.backend is not None:
            await self.backend.close()

    # ------------------------------------------------------------ the filter

    async def handle(self, ex: Exchange, next: Next) -> Reply:
        if ex.endpoint not in self.endpoints or not ex.body or self.backend is None:
            return await next(ex)
        no_cache, no_store = _cache_control(ex.headers.get("Cache-Control") if ex.headers else None)
        ttl = self._request_ttl(ex)
        if no_store or ttl <= 0:
            self._mark(ex, "bypass")
            return await next(ex)
        key = self.key_for(ex)
        if no_cache:
            self._mark(ex, "bypass")
        else:
            entry, failed = await self._lookup(key)
            if entry is not None:
                stored_at, body = entry
                age = max(0.0, time.time() - stored_at)
                if age <= ttl:
                    self._mark(ex, "hit")
                    ex.response_headers["Age"] = str(int(age))
                    return self._replay(ex, body)
            self._mark(ex, "error" if failed else "miss")
        reply = await next(ex)
        if reply.status == 200:
            self._capture(ex, reply, key, ttl)
        return reply

    def key_for(self, ex: Exchange) -> str:
        body = ex.body or {}
        material = {k: v for k, v in body.items() if k not in _NOT_IN_KEY}
        model = body.get("model")
        if isinstance(model, str):
            material["model"] = self.gateway.config.aliases.get(model, model)
        digest = hashlib.blake2b(digest_size=20)
        digest.update(f"{ex.endpoint}\0{ex.ingress}\0{caller_identity(ex)}\0".encode())
        digest.update(orjson.dumps(material, option=orjson.OPT_SORT_KEYS))
        return f"{ex.endpoint}:{digest.hexdigest()}"

    # ------------------------------------------------------------ helpers

    def _request_ttl(self, ex: Exchange) -> float:
        raw = ex.headers.get(TTL_HEADER) if ex.headers else None
        if raw is None:
            return self.config.max_age
        seconds = parse_duration(raw)
        if seconds is None or seconds < 0:
            raise GatewayError(
                400,
                f"{TTL_HEADER} must be a number of seconds (or like '30s', '5m'), got {raw[:40]!r}",
                code="invalid_cache_ttl",
            )
        return min(seconds, self.config.max_age)

    def _mark(self, ex: Exchange, result: str) -> None:
        self._count[result].inc()
        ex.metadata["cache"] = result
        ex.response_headers[RESULT_HEADER] = "miss" if result == "error" else result

    async def _lookup(self, key: str) -> tuple[tuple[float, bytes] | None, bool]:
        assert self.backend is not None
        try:
            await self._writes.settle((key,))
            return await self.backend.get(key), False
        except Exception as exc:  # a cache that is down is a cache that missed
            self._warn(exc, "serving without the cache")
            return None, True

    def _replay(self, ex: Exchange, body: bytes) -> Reply:
        if ex.stream and ex.endpoint in ("chat", "completions"):
            data = orjson.loads(body)
            if data.get("type") == "message":  # a native Anthropic answer (Messages ingress)
                data = native_reply_to_openai(data)
            return Reply(200, stream=_replay_stream(replay_chunks(ex.endpoint, data, ex.wants_usage_chunk)))
        return Reply(200, raw=body)

    def _capture(self, ex: Exchange, reply: Reply, key: str, ttl: float) -> None:
        limit = self.config.max_entry_bytes
        if reply.stream is None:
            body = reply.body_bytes()
            if len(body) <= limit:
                reply.on_complete(lambda e, r, error: self._store(key, body, ttl) if error is None else None)
            return
        tap = _StreamTap(limit)
        reply.wrap_stream(tap.wrap)

        def finished(e: Exchange, r: Reply, error: GatewayError | None) -> None:
            if error is None and tap.complete:
                assembled = assemble(e.endpoint, tap.events, e.usage)
                if assembled is not None:
                    self._store(key, orjson.dumps(assembled), ttl)

        reply.on_complete(finished)

    def _store(self, key: str, body: bytes, ttl: float) -> None:
        assert self.backend is not None
        self._writes.schedule((key,), self.backend.set(key, body, ttl))

    def health(self) -> dict[str, Any] | None:
        backend = self.backend
        return {
            "backend": self.config.backend,
            **({"entries": len(backend)} if isinstance(backend, MemoryCache) else {}),
        }


def _cache_control(value: str | None) -> tuple[bool, bool]:
    """(no-cache, no-store) from a request's Cache-Control header."""
    if not value:
        return False, False
    directives = {d.strip().split("=", 1)[0].lower() for d in value.split(",")}
    return "no-cache" in directives, "no-store" in directives


class _StreamTap:
    """Collects a stream's data events (as bytes, parsed only once it ended cleanly)."""

    __slots__ = ("limit", "size", "events", "complete", "too_big")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.size = 0
        self.events: list[bytes] = []
        self.complete = False
        self.too_big = False

    async def wrap(self, stream: AsyncIterator[StreamChunk]) -> AsyncIterator[StreamChunk]:
        try:
            async for chunk in stream:
                if not self.too_big:
                    if chunk.kind == "data":
                        self.size += len(chunk.raw)
                        if self.size > self.limit:
                            self.too_big, self.events = True, []
                        else:
                            self.events.append(chunk.raw)
                    elif chunk.kind == "done":
                        self.complete = True
                yield chunk
        finally:
            aclose = getattr(stream, "aclose", None)
            if aclose is not None:
                await aclose()


async def _replay_stream(chunks: list[StreamChunk]) -> AsyncIterator[StreamChunk]:
    for chunk in chunks:
        yield chunk


# ---------------------------------------------------------------- stream <-> answer


def assemble(endpoint: str, events: list[bytes], usage: Usage) -> dict[str, Any] | None:
    """The non-streamed answer equivalent to a finished stream of chunk events."""
    head: dict[str, Any] | None = None
    slots: dict[int, dict[str, Any]] = {}
    stream_usage: Any = None
    for raw in events:
        data = StreamChunk(raw).json()
        if not data:
            continue
        if head is None:
            head = {k: data[k] for k in ("id", "created", "model", "system_fingerprint") if k in data}
        if data.get("usage"):
            stream_usage = data["usage"]
        for choice in data.get("choices") or ():
            index = choice.get("index", 0)
            slot = slots.get(index)
            if slot is None:
                slot = slots[index] = {"text": [], "refusal": [], "tools": {}, "logprobs": [], "finish": None}
            _merge_choice(endpoint, slot, choice)
    if head is None or not slots:
        return None
    final_usage = stream_usage or (usage.to_openai() if usage.total_tokens else None)
    if endpoint == "completions":
        out = {**head, "object": "text_completion"}
        out["choices"] = [
            {"text": "".join(s["text"]), "index": i, "logprobs": None, "finish_reason": s["finish"]}
            for i, s in sorted(slots.items())
        ]
    else:
        out = {**head, "object": "chat.completion"}
        out["choices"] = [_chat_choice(i, s) for i, s in sorted(slots.items())]
    if final_usage:
        out["usage"] = final_usage
    return out


def _merge_choice(endpoint: str, slot: dict[str, Any], choice: dict[str, Any]) -> None:
    if choice.get("finish_reason"):
        slot["finish"] = choice["finish_reason"]
    if endpoint == "completions":
        if isinstance(choice.get("text"), str):
            slot["text"].append(choice["text"])
        return
    delta = choice.get("delta") or {}
    if isinstance(delta.get("content"), str):
        slot["text"].append(delta["content"])
    if isinstance(delta.get("refusal"), str):
        slot["refusal"].append(delta["refusal"])
    logprobs = choice.get("logprobs")
    if isinstance(logprobs, dict) and isinstance(logprobs.get("content"), list):
        slot["logprobs"].extend(logprobs["content"])
    for call in delta.get("tool_calls") or ():
        at = call.get("index", 0)
        merged = slot["tools"].setdefault(
            at, {"id": None, "type": "function", "function": {"name": "", "arguments": ""}}
        )
        if call.get("id"):
            merged["id"] = call["id"]
        if call.get("type"):
            merged["type"] = call["type"]
        fn = call.get("function") or {}
        merged["function"]["name"] += fn.get("name") or ""
        merged["function"]["arguments"] += fn.get("arguments") or ""


def _chat_choice(index: int, slot: dict[str, Any]) -> dict[str, Any]:
    tools = [call for _, call in sorted(slot["tools"].items())]
    text = "".join(slot["text"])
    message: dict[str, Any] = {
        "role": "assistant",
        "content": text if text or not tools else None,
        "refusal": "".join(slot["refusal"]) or None,
    }
    if tools:
        message["tool_calls"] = tools
    return {
        "index": index,
        "message": message,
        "logprobs": {"content": slot["logprobs"]} if slot["logprobs"] else None,
        "finish_reason": slot["finish"],
    }


def replay_chunks(endpoint: str, data: dict[str, Any], wants_usage: bool) -> list[StreamChunk]:
    """A stored answer as the stream events the client would have received."""
    chunk_object = "text_completion" if endpoint == "completions" else "chat.completion.chunk"
    base = {k: data[k] for k in ("id", "created", "model", "system_fingerprint") if k in data}
    base["object"] = chunk_object
    out: list[StreamChunk] = []
    for choice in data.get("choices") or ():
        index = choice.get("index", 0)
        if endpoint == "completions":
            out.append(StreamChunk.from_json({**base, "choices": [
                {"text": choice.get("text") or "", "index": index, "logprobs": None,
                 "finish_reason": choice.get("finish_reason")}
            ]}))  # fmt: skip
            continue
        message = choice.get("message") or {}
        delta: dict[str, Any] = {"role": message.get("role", "assistant"), "content": message.get("content")}
        if message.get("refusal"):
            delta["refusal"] = message["refusal"]
        out.append(StreamChunk.from_json({**base, "choices": [
            {"index": index, "delta": delta, "logprobs": choice.get("logprobs"), "finish_reason": None}
        ]}))  # fmt: skip
        calls = message.get("tool_calls")
        if calls:
            deltas = [{"index": i, **call} for i, call in enumerate(calls)]
            out.append(StreamChunk.from_json({**base, "choices": [
                {"index": index, "delta": {"tool_calls": deltas}, "logprobs": None, "finish_reason": None}
            ]}))  # fmt: skip
        out.append(StreamChunk.from_json({**base, "choices": [
            {"index": index, "delta": {}, "logprobs": None, "finish_reason": choice.get("finish_reason")}
        ]}))  # fmt: skip
    if wants_usage and data.get("usage"):
        out.append(StreamChunk.from_json({**base, "choices": [], "usage": data["usage"]}))
    out.append(StreamChunk.done())
    return out
