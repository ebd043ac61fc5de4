"""The request/response pair that travels through the filter chain.

`Exchange` is created once per client request by an ingress (the OpenAI surface, the
Anthropic Messages surface, the interception proxy). The body is parsed once, kept as a
dict in `ex.body`, and serialized once when a provider sends it.

`Reply` is what a filter gets back from `next(ex)`: either a whole JSON body or a stream of
`StreamChunk`s. Bodies stay as the upstream's bytes until someone asks for the dict, so an
OpenAI-compatible answer nobody touched goes back to the client byte for byte.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import orjson

if TYPE_CHECKING:
    from ferro_proxy.errors import GatewayError

DONE_LINE = b"data: [DONE]\n\n"


@dataclass(slots=True)
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0
    reasoning_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def copy(self) -> Usage:
        return Usage(self.prompt_tokens, self.completion_tokens, self.cached_tokens, self.reasoning_tokens)

    def add(self, other: Usage) -> None:
        self.prompt_tokens += other.prompt_tokens
        self.completion_tokens += other.completion_tokens
        self.cached_tokens += other.cached_tokens
        self.reasoning_tokens += other.reasoning_tokens

    @classmethod
    def from_openai(cls, usage: dict[str, Any] | None) -> Usage | None:
        if not isinstance(usage, dict):
            return None
        prompt_details = usage.get("prompt_tokens_details") or {}
        completion_details = usage.get("completion_tokens_details") or {}
        return cls(
            prompt_tokens=int(usage.get("prompt_tokens") or 0),
            completion_tokens=int(usage.get("completion_tokens") or 0),
            cached_tokens=int(prompt_details.get("cached_tokens") or 0)
            if isinstance(prompt_details, dict)
            else 0,
            reasoning_tokens=int(completion_details.get("reasoning_tokens") or 0)
            if isinstance(completion_details, dict)
            else 0,
        )

    def to_openai(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.total_tokens,
        }
        if self.cached_tokens:
            out["prompt_tokens_details"] = {"cached_tokens": self.cached_tokens}
        if self.reasoning_tokens:
            out["completion_tokens_details"] = {"reasoning_tokens": self.reasoning_tokens}
        return out


class StreamChunk:
    """One SSE event of a streamed answer.

    `raw` is the event as it goes on the wire (ending in a blank line). `json()` parses the
    `data:` payload on first use; `set_json()` replaces it and re-encodes the event.
    Kinds: "data" (a JSON payload), "done" (`data: [DONE]`), "comment" (heartbeat),
    "event" (any other named event, passed through untouched).
    """

    __slots__ = ("raw", "kind", "_data")

    def __init__(self, raw: bytes, kind: str = "data", data: dict[str, Any] | None = None) -> None:
        self.raw = raw
        self.kind = kind
        self._data = data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> StreamChunk:
        return cls(b"data: " + orjson.dumps(data) + b"\n\n", "data", data)

    @classmethod
    def done(cls) -> StreamChunk:
        return cls(DONE_LINE, "done")

    @classmethod
    def comment(cls, text: str = "keep-alive") -> StreamChunk:
        return cls(b": " + text.encode() + b"\n\n", "comment")

    def json(self) -> dict[str, Any]:
        if self._data is None:
            if self.kind != "data":
                return {}
            payload = b"".join(
                line[5:].lstrip(b" ") for line in self.raw.splitlines() if line.startswith(b"data:")
            )
            try:
                parsed = orjson.loads(payload)
            except orjson.JSONDecodeError:
                parsed = {}
            self._data = parsed if isinstance(parsed, dict) else {}
        return self._data

    def set_json(self, data: dict[str, Any]) -> None:
        self._data = data
        self.raw = b"data: " + orjson.dumps(data) + b"\n\n"

    def __repr__(self) -> str:
        return f"StreamChunk({self.kind}, {self.raw[:80]!r})"


Finalizer = Callable[["Exchange", "Reply", "GatewayError | None"], Awaitable[None] | None]


class Reply:
    """A response: status, headers, and either a JSON body or a chunk stream.

    Body handling is lazy in both directions: `raw` bytes from upstream are parsed only when
    a filter calls `json()`, and a dict set with `set_json()` is serialized only when sent.
    """

    __slots__ = ("status", "headers", "_raw", "_data", "stream", "content_type", "finalizers")

    def __init__(
        self,
        status: int = 200,
        *,
        raw: bytes | None = None,
        data: Any = None,
        stream: AsyncIterator[StreamChunk] | None = None,
        headers: dict[str, str] | None = None,
        content_type: str = "application/json",
    ) -> None:
        self.status = status
        self.headers: dict[str, str] = headers if headers is not None else {}
        self._raw = raw
        self._data = data
        self.stream = stream
        self.content_type = "text/event-stream" if stream is not None else content_type
        self.finalizers: list[Finalizer] = []

    @property
    def is_stream(self) -> bool:
        return self.stream is not None

    def json(self) -> Any:
        """The body as parsed JSON. Treat the result as yours to change: it is re-encoded."""
        if self._data is None and self._raw is not None:
            self._data = orjson.loads(self._raw) if self._raw else None
        self._raw = None  # the caller may mutate it: serialize again on send
        return self._data

    def peek_json(self) -> Any:
        """The body as parsed JSON, for reading only (keeps the upstream bytes for sending)."""
        if self._data is None and self._raw is not None:
            self._data = orjson.loads(self._raw) if self._raw else None
        return self._data

    def set_json(self, data: Any) -> None:
        self._data = data
        self._raw = None

    def body_bytes(self) -> bytes:
        if self._raw is None:
            self._raw = orjson.dumps(self._data) if self._data is not None else b""
        return self._raw

    def on_complete(self, fn: Finalizer) -> None:
        """Run `fn(ex, reply, error)` once the client has the whole answer (or it failed)."""
        self.finalizers.append(fn)

    def wrap_stream(self, fn: Callable[[AsyncIterator[StreamChunk]], AsyncIterator[StreamChunk]]) -> None:
        """Replace the stream with `fn(stream)`: how filters see or change each chunk."""
        if self.stream is not None:
            self.stream = fn(self.stream)


@dataclass(slots=True)
class Attempt:
    """One try at one upstream, for logs and error messages."""

    provider: str
    model: str
    status: int | None = None
    error: str | None = None
    duration: float = 0.0


@dataclass(slots=True)
class Exchange:
    """One client request as it travels through the chain."""

    request_id: str
    endpoint: str  # chat | completions | embeddings | images | models | messages | passthrough
    method: str
    path: str
    headers: Any  # the client's headers (a case-insensitive multidict)
    body: dict[str, Any] | None = None
    query: str = ""
    raw_body: bytes = b""
    ingress: str = "openai"  # openai | anthropic | intercept
    client_api_key: str | None = None  # a provider key the client brought (BYO key)
    client_key_for: str | None = None  # the only provider the BYO key may go to (set by the router)
    gateway_key: Any = None  # the authenticated gateway key record, if any
    metadata: dict[str, Any] = field(default_factory=dict)
    # Filled in by the router and providers:
    provider: str | None = None
    target: str | None = None
    resolved_model: str | None = None
    usage: Usage = field(default_factory=Usage)
    cost_usd: float | None = None
    attempts: list[Attempt] = field(default_factory=list)
    started: float = field(default_factory=time.perf_counter)
    upstream_seconds: float = 0.0
    ttft_seconds: float | None = None
    response_headers: dict[str, str] = field(default_factory=dict)
    native_path: str | None = None  # pass-through: the checked raw path (and query) below /v1

    @property
    def model(self) -> str:
        body = self.body
        value = body.get("model") if body else None
        return value if isinstance(value, str) else ""

    @property
    def stream(self) -> bool:
        return bool(self.body and self.body.get("stream"))

    @property
    def wants_usage_chunk(self) -> bool:
        """Whether the client itself asked for the final usage chunk of a stream."""
        opts = self.body.get("stream_options") if self.body else None
        return bool(isinstance(opts, dict) and opts.get("include_usage"))

    def elapsed(self) -> float:
        return time.perf_counter() - self.started
