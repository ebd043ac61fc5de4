"""Screening streamed output as it flows, with a small look-behind window.

A *screen* sees one choice's text piece by piece: `feed(text)` returns the text to send on
now and the findings decided so far; `finish()` returns what was held back and the last
findings. Three kinds:

- `HoldBackScreen` (block and redact): keeps the last `window` characters unsent, so a
  match split across chunks is whole in the buffer before any of it leaves. A match that
  reaches into the held part is kept back entirely until it stops growing.
- `LookBehindScreen` (warn and log): sends text on at once and rescans the last `window`
  characters with each new piece, reporting each match once.
- `WholeTextScreen` (checks that need the full answer, e.g. a JSON Schema): passes text on
  and judges the whole text when the choice finishes.

`screen_openai_stream` and `screen_anthropic_stream` apply screens to OpenAI
`chat.completion.chunk` / `text_completion` streams and to native Anthropic Messages event
streams, rewriting chunk text when a screen changed it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any, Protocol

import orjson

from ferro_proxy.exchange import StreamChunk
from filters.guardrails.text import Finding, apply_redactions

Scan = Callable[[str], list[Finding]]
Act = Callable[[list[Finding]], None]  # reports findings; raises GatewayError on a block

CONTEXT = 16  # characters of already-sent text kept so \b and look-arounds see real neighbours


class Screen(Protocol):
    def feed(self, text: str) -> tuple[str, list[Finding]]: ...

    def finish(self) -> tuple[str, list[Finding]]: ...


class HoldBackScreen:
    __slots__ = ("scan", "window", "max_hold", "buf", "ctx")

    def __init__(self, scan: Scan, window: int, max_hold: int = 8192) -> None:
        self.scan = scan
        self.window = window
        self.max_hold = max(max_hold, window * 4)
        self.buf = ""
        self.ctx = ""

    def _found(self) -> list[Finding]:
        ctx = self.ctx
        found = self.scan(ctx + self.buf) if ctx else self.scan(self.buf)
        if not ctx:
            return found
        shift = len(ctx)
        kept = []
        for f in found:
            if f.start >= shift:  # a match starting in sent text was decided earlier
                f.start -= shift
                f.end -= shift
                kept.append(f)
        return kept

    def feed(self, text: str) -> tuple[str, list[Finding]]:
        self.buf += text
        size = len(self.buf)
        if size <= self.window:
            return "", []
        cut = size - self.window
        found = self._found()
        decided: list[Finding] = []
        if found:
            for f in found:  # findings do not overlap: at most one straddles the cut
                if f.start < cut < f.end:
                    cut = f.start  # it may still grow: hold all of it back
                    break
            if size - cut > self.max_hold:  # a match that never stops growing: decide it now
                cut = size - self.window
            for f in found:
                if f.start < cut:
                    f.end = min(f.end, cut)
                    decided.append(f)
        return self._emit(cut, decided), decided

    def finish(self) -> tuple[str, list[Finding]]:
        if not self.buf:
            return "", []
        found = self._found()
        return self._emit(len(self.buf), found), found

    def _emit(self, cut: int, decided: list[Finding]) -> str:
        head, self.buf = self.buf[:cut], self.buf[cut:]
        if not head:
            return ""
        self.ctx = (self.ctx + head)[-CONTEXT:]
        return apply_redactions(head, decided) if decided else head


class LookBehindScreen:
    __slots__ = ("scan", "window", "tail", "pos", "reported_end")

    def __init__(self, scan: Scan, window: int) -> None:
        self.scan = scan
        self.window = window
        self.tail = ""
        self.pos = 0  # characters seen so far
        self.reported_end = 0  # absolute end of the last reported finding

    def feed(self, text: str) -> tuple[str, list[Finding]]:
        buf = self.tail + text
        base = self.pos - len(self.tail)
        fresh = []
        for f in self.scan(buf):
            if f.end > len(self.tail) and base + f.start >= self.reported_end:
                fresh.append(f)
                self.reported_end = base + f.end
        self.pos += len(text)
        self.tail = buf[-self.window :]
        return text, fresh

    def finish(self) -> tuple[str, list[Finding]]:
        return "", []


class WholeTextScreen:
    __slots__ = ("check", "parts")

    def __init__(self, check: Scan) -> None:
        self.check = check
        self.parts: list[str] = []

    def feed(self, text: str) -> tuple[str, list[Finding]]:
        self.parts.append(text)
        return text, []

    def finish(self) -> tuple[str, list[Finding]]:
        return "", self.check("".join(self.parts))


# ------------------------------------------------------------------ OpenAI-shaped streams


async def screen_openai_stream(
    chunks: AsyncIterator[StreamChunk], new_screen: Callable[[], Screen], act: Act
) -> AsyncIterator[StreamChunk]:
    screens: dict[int, Screen] = {}
    last: dict[str, Any] = {}
    try:
        async for chunk in chunks:
            if chunk.kind == "data":
                data = chunk.json()
                choices = data.get("choices")
                if isinstance(choices, list) and choices:
                    last = data
                    if _screen_choices(choices, screens, new_screen, act):
                        chunk.set_json(data)
            elif chunk.kind == "done" and screens:
                for extra in _flush(screens, last, act):
                    yield extra
            yield chunk
        for extra in _flush(screens, last, act):
            yield extra
    finally:
        aclose = getattr(chunks, "aclose", None)
        if aclose is not None:
            await aclose()


def _text_slot(choice: dict[str, Any]) -> tuple[dict[str, Any], str]:
    delta = choice.get("delta")
    if isinstance(delta, dict):
        return delta, "content"
    return choice, "text"


def _screen_choices(
    choices: list[Any], screens: dict[int, Screen], new_screen: Callable[[], Screen], act: Act
) -> bool:
    changed = False
    for choice in choices:
        if not isinstance(choice, dict):
            continue
        index = choice.get("index", 0)
        holder, key = _text_slot(choice)
        text = holder.get(key)
        out: str | None = None
        if isinstance(text, str) and text:
            screen = screens.get(index)
            if screen is None:
                screen = screens[index] = new_screen()
            out, found = screen.feed(text)
            if found:
                act(found)
        if choice.get("finish_reason") is not None:
            screen = screens.pop(index, None)
            if screen is not None:
                tail, found = screen.finish()
                if found:
                    act(found)
                if tail:
                    out = (out if out is not None else "") + tail
        if out is not None and out != text:
            holder[key] = out
            changed = True
    return changed


def _flush(screens: dict[int, Screen], last: dict[str, Any], act: Act) -> list[StreamChunk]:
    """Send what is still held for choices that never reported a finish_reason."""
    out = []
    chat = bool(last.get("choices")) and isinstance(last["choices"][0].get("delta"), dict)
    top = {k: v for k, v in last.items() if k not in ("choices", "usage")}
    for index, screen in list(screens.items()):
        tail, found = screen.finish()
        if found:
            act(found)
        if tail:
            choice: dict[str, Any] = {"index": index, "finish_reason": None}
            if chat:
                choice["delta"] = {"content": tail}
            else:
                choice["text"] = tail
            out.append(StreamChunk.from_json({**top, "choices": [choice]}))
    screens.clear()
    return out


# ------------------------------------------------------------------ native Anthropic streams


def _event_data(raw: bytes) -> dict[str, Any]:
    payload = b"".join(line[5:].lstrip(b" ") for line in raw.splitlines() if line.startswith(b"data:"))
    try:
        data = orjson.loads(payload)
    except orjson.JSONDecodeError:
        return {}
    return data if isinstance(data, dict) else {}


def _event(name: str, data: dict[str, Any]) -> StreamChunk:
    return StreamChunk(b"event: " + name.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n", "event")


async def screen_anthropic_stream(
    chunks: AsyncIterator[StreamChunk], new_screen: Callable[[], Screen], act: Act
) -> AsyncIterator[StreamChunk]:
    """Screen `text_delta`s of a native Messages stream; held text is sent before its
    block's `content_block_stop`."""
    screens: dict[int, Screen] = {}
    try:
        async for chunk in chunks:
            raw = chunk.raw
            if b'"text_delta"' in raw:
                data = _event_data(raw)
                delta = data.get("delta")
                if isinstance(delta, dict) and isinstance(delta.get("text"), str):
                    index = data.get("index", 0)
                    screen = screens.get(index)
                    if screen is None:
                        screen = screens[index] = new_screen()
                    out, found = screen.feed(delta["text"])
                    if found:
                        act(found)
                    if out != delta["text"]:
                        delta["text"] = out
                        chunk = _event("content_block_delta", data)
            elif b"content_block_stop" in raw or b"message_stop" in raw:
                data = _event_data(raw)
                if data.get("type") == "content_block_stop":
                    indexes = [data.get("index", 0)] if data.get("index", 0) in screens else []
                else:
                    indexes = list(screens) if data.get("type") == "message_stop" else []
                for index in indexes:
                    tail, found = screens.pop(index).finish()
                    if found:
                        act(found)
                    if tail:
                        yield _event(
                            "content_block_delta",
                            {
                                "type": "content_block_delta",
                                "index": index,
                                "delta": {"type": "text_delta", "text": tail},
                            },
                        )
            yield chunk
    finally:
        aclose = getattr(chunks, "aclose", None)
        if aclose is not None:
            await aclose()
