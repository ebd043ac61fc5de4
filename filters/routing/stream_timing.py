"""Timeouts that fit streams, and holding a stream's headers while its first chunk is awaited.

A stream is timed by `first_byte` (request sent to its first content chunk) and `idle` (the
longest gap between two chunks), not by `total`, which would cut a healthy long answer. An
optional `stream_total`, and the request's deadline, cap its whole length: those are the
gateway's own limits, so a stream they cut says nothing bad about the target.

The router answers a stream once its first chunk is at hand, so a quick failure keeps its
HTTP status and can fail over. It waits at most `stream_header_hold` for that: then the
client gets 200 and the headers (and the writer's keepalives) while the router keeps trying,
target after target, until some content exists; a failure after the headers went out ends
the stream with an SSE error event.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Coroutine
from dataclasses import dataclass
from typing import Any

from ferro_proxy.config import TimeoutConfig
from ferro_proxy.errors import GatewayError
from ferro_proxy.exchange import Reply, StreamChunk

IDLE_CODE = "stream_idle_timeout"
CAP_CODE = "stream_total_exceeded"


@dataclass(frozen=True, slots=True)
class StreamTimers:
    first_byte: float | None = None
    idle: float | None = None
    total: float | None = None  # `stream_total`


NO_TIMERS = StreamTimers()


def stream_timers(target: TimeoutConfig | None, provider: TimeoutConfig) -> StreamTimers:
    """A target's own stream timeouts, else its provider's."""

    def pick(name: str) -> float | None:
        return (getattr(target, name) if target is not None else None) or getattr(provider, name) or None

    return StreamTimers(pick("first_byte"), pick("idle"), pick("stream_total"))


def first_byte_error(target: str, seconds: float) -> GatewayError:
    return GatewayError(
        504, f"{target} sent no first chunk within {seconds:g}s (timeout.first_byte)", code="gateway_timeout"
    )


def idle_error(target: str, seconds: float) -> GatewayError:
    return GatewayError(
        504,
        f"{target} stream stalled: no chunk for {seconds:g}s (timeout.idle)",
        code=IDLE_CODE,
        type="api_error",
        retryable=False,
    )


def cap_error(target: str, what: str) -> GatewayError:
    """The gateway's own cap ended the stream (`what`: which one): not the target's fault."""
    return GatewayError(504, f"{target} stream cut: {what}", code=CAP_CODE, type="api_error", retryable=False)


async def hold_headers(route: Coroutine[Any, Any, Reply], hold: float) -> Reply:
    """Run `route` (the router's whole failover loop for a stream) for up to `hold` seconds.

    Done by then: its reply, or its error (with its real status). Still waiting for a first
    chunk: a 200 stream reply now, which goes on waiting for `route` behind the headers."""
    task = asyncio.ensure_future(route)
    task.add_done_callback(_retrieve)
    try:
        await asyncio.wait({task}, timeout=hold)
    except BaseException:  # the client went away: stop trying (settles permits and limiters)
        task.cancel()
        await asyncio.wait({task})
        raise
    if task.done():
        return task.result()
    return Reply(200, stream=_after_hold(task))


async def _after_hold(task: asyncio.Future[Reply]) -> AsyncIterator[StreamChunk]:
    reply: Reply | None = None
    try:
        reply = await task  # a GatewayError here becomes the stream's SSE error event
        if reply.stream is None:  # an upstream that answered a stream request whole
            yield StreamChunk(b"data: " + reply.body_bytes() + b"\n\n")
            return
        async for chunk in reply.stream:
            yield chunk
    finally:
        if not task.done():
            task.cancel()
            await asyncio.wait({task})
        elif reply is not None and reply.stream is not None:
            aclose = getattr(reply.stream, "aclose", None)
            if aclose is not None:
                await aclose()


def _retrieve(task: asyncio.Future[Reply]) -> None:
    # A held stream nobody read to the end: its error is not worth a "never retrieved" warning.
    if not task.cancelled():
        with contextlib.suppress(BaseException):
            task.exception()
