"""Keepalives for a stream whose headers went out before its first chunk (a slow first token).

Proxies in front of the app cut connections that stay silent, so while the writer waits for a
stream's first chunk it sends one keepalive every `sse_keepalive` seconds. They are written
straight to the client, never put in the stream: filters (guardrails, usage taps, the
response cache) do not see them. OpenAI-shaped streams get an SSE comment, which every SSE
parser skips; Messages streams get Anthropic's own `ping` event, which its SDKs skip.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable

from ferro_proxy.exchange import Exchange, Reply, StreamChunk

COMMENT = b": keepalive\n\n"
PING = b'event: ping\ndata: {"type": "ping"}\n\n'

Write = Callable[[bytes], Awaitable[None]]


def keepalive_line(ex: Exchange, reply: Reply) -> bytes | None:
    """What this stream's keepalive is; None for a pass-through (bytes stay as they are)."""
    if reply.content_type != "text/event-stream" or ex.endpoint == "passthrough":
        return None
    return PING if ex.ingress == "anthropic" else COMMENT


def with_keepalives(
    stream: AsyncIterator[StreamChunk], write: Write, line: bytes | None, every: float
) -> AsyncIterator[StreamChunk]:
    """`stream`, with `line` written every `every` seconds until its first chunk."""
    if line is None or every <= 0:
        return stream
    return _kept_alive(stream, write, line, every)


async def _kept_alive(
    stream: AsyncIterator[StreamChunk], write: Write, line: bytes, every: float
) -> AsyncIterator[StreamChunk]:
    chunks = stream.__aiter__()
    ticker = asyncio.ensure_future(_tick(write, line, every))
    try:
        first = await chunks.__anext__()
    except StopAsyncIteration:
        return
    finally:
        ticker.cancel()
        await asyncio.wait({ticker})  # no keepalive may land inside the first chunk's write
    yield first
    async for chunk in chunks:
        yield chunk


async def _tick(write: Write, line: bytes, every: float) -> None:
    while True:
        await asyncio.sleep(every)
        try:
            await write(line)
        except (ConnectionResetError, RuntimeError):
            return  # the client went away; the stream's own next write reports it
