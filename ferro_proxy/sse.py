"""Incremental Server-Sent Events framing: bytes in, one event at a time out.

Upstream bytes arrive in arbitrary TCP-sized pieces; an event ends at a blank line
(`\\n\\n`, `\\r\\n\\r\\n` or `\\r\\r`). The splitter keeps the partial tail between reads and
never re-scans bytes it already searched.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from ferro_proxy.exchange import StreamChunk


class SSESplitter:
    __slots__ = ("_buf", "_crlf")

    def __init__(self) -> None:
        self._buf = b""
        self._crlf = False

    def feed(self, data: bytes) -> list[bytes]:
        """Add bytes; return every complete event (each ending in one blank line, LF form)."""
        if b"\r" in data:
            self._crlf = True
        buf = self._buf + data if self._buf else data
        hold = b""
        if self._crlf:
            if buf.endswith(b"\r"):  # may be half of a CRLF split across reads
                buf, hold = buf[:-1], b"\r"
            buf = buf.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        events: list[bytes] = []
        start = 0
        while True:
            idx = buf.find(b"\n\n", start)
            if idx < 0:
                break
            event = buf[start : idx + 2]
            start = idx + 2
            if event.strip():
                events.append(event)
        self._buf = buf[start:] + hold
        return events

    def flush(self) -> bytes | None:
        """The unterminated tail at end of stream, if it holds anything."""
        rest, self._buf = self._buf, b""
        return rest + b"\n\n" if rest.strip() else None


def classify(event: bytes) -> StreamChunk:
    """Wrap one raw SSE event in a StreamChunk of the right kind."""
    if event.startswith(b"data: [DONE]") or event.startswith(b"data:[DONE]"):
        return StreamChunk(event, "done")
    if event.startswith(b":"):
        return StreamChunk(event, "comment")
    if event.startswith(b"data:"):
        return StreamChunk(event, "data")
    return StreamChunk(event, "event")


def parse_event(event: bytes) -> tuple[str | None, str]:
    """Split a raw event into (event name, data text) for native provider streams."""
    name: str | None = None
    data_lines: list[str] = []
    for line in event.decode("utf-8", "replace").split("\n"):
        if not line or line.startswith(":"):
            continue
        key, _, value = line.partition(":")
        if value.startswith(" "):
            value = value[1:]
        if key == "event":
            name = value
        elif key == "data":
            data_lines.append(value)
    return name, "\n".join(data_lines)


async def iter_events(content: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    """Raw SSE events from an async byte iterator (e.g. `response.content.iter_any()`)."""
    splitter = SSESplitter()
    async for data in content:
        for event in splitter.feed(data):
            yield event
    tail = splitter.flush()
    if tail:
        yield tail
