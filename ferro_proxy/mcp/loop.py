"""One request's agentic loop: run the model's MCP tool calls and ask it again.

A turn whose tool calls all belong to MCP servers is executed here (its calls in parallel),
the assistant message and one `tool` message per call are appended to
`ex.body["messages"]`, and the rest of the chain is called again. A turn with any of the
caller's own tool calls goes back to the caller with only those calls (the caller cannot
answer ours, and every call id in an assistant message needs an answer). A server's tools
run in at most `max_call_depth` turns of one request; asking for more ends the answer with
`finish_reason: "length"`.

Streams: each turn is streamed from upstream; content deltas reach the client as they
arrive, MCP tool-call deltas are held back, and SSE comments keep the connection alive
while tools run, so the final answer is streamed chunk by chunk.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

import orjson

from ferro_proxy.chain import Next
from ferro_proxy.errors import GatewayError
from ferro_proxy.exchange import Exchange, Reply, StreamChunk
from ferro_proxy.jsonlog import log_fields
from ferro_proxy.mcp.manager import ToolOutcome, ToolRef

if TYPE_CHECKING:
    from ferro_proxy.mcp.manager import McpManager

log = logging.getLogger("ferro_proxy.mcp")


class ToolLoop:
    def __init__(
        self,
        manager: McpManager,
        ex: Exchange,
        next: Next,
        offered: dict[str, ToolRef],
        heartbeat_seconds: float,
    ) -> None:
        self.manager = manager
        self.ex = ex
        self.next = next
        self.offered = offered
        self.heartbeat_seconds = heartbeat_seconds
        self.turns: dict[str, int] = {}  # tool turns used, per server

    # ------------------------------------------------------------ whole answers

    async def run(self) -> Reply:
        reply = await self.next(self.ex)
        earlier: list[Any] = []
        turned = False
        while reply.stream is None:
            data = reply.peek_json()
            choice = _first_choice(data)
            message = choice.get("message") if choice else None
            if not isinstance(message, dict):
                break
            calls = [c for c in message.get("tool_calls") or [] if isinstance(c, dict)]
            ours = [c for c in calls if _call_name(c) in self.offered]
            if not ours:
                break
            if len(ours) < len(calls):  # the caller's own calls go back; ours cannot be answered
                reply.json()["choices"][0]["message"]["tool_calls"] = [c for c in calls if c not in ours]
                break
            if self._depth_reached(ours):
                choice = reply.json()["choices"][0]
                choice["message"].pop("tool_calls", None)
                choice["finish_reason"] = "length"
                break
            tool_messages = await self.run_calls(ours)
            self._append_turn(message.get("content"), ours, tool_messages)
            earlier.extend(reply.finalizers)
            reply = await self.next(self.ex)
            turned = True
        if turned and reply.stream is None:
            data = reply.json()
            if isinstance(data, dict):
                data["usage"] = self.ex.usage.to_openai()
        reply.finalizers[:0] = earlier
        return reply

    # ------------------------------------------------------------ streams

    async def run_stream(self) -> Reply:
        first = await self.next(self.ex)
        if first.stream is not None:
            first.stream = self._stream(first, first.stream)
        return first

    async def _stream(self, first: Reply, upstream: AsyncIterator[StreamChunk]) -> AsyncIterator[StreamChunk]:
        current: AsyncIterator[StreamChunk] | None = upstream
        turn = 0
        try:
            while current is not None:
                calls = _TurnCalls(self.offered)
                held_finish: StreamChunk | None = None
                held_usage: StreamChunk | None = None
                async for chunk in current:
                    if chunk.kind == "done":
                        break
                    if chunk.kind != "data":
                        yield chunk
                        continue
                    data = chunk.json()
                    choices = data.get("choices")
                    if not choices:
                        if data.get("usage") is not None:
                            held_usage = chunk
                        else:
                            yield chunk
                        continue
                    choice = choices[0]
                    delta = choice.get("delta")
                    delta = delta if isinstance(delta, dict) else {}
                    if delta.get("tool_calls"):
                        kept = calls.feed(delta["tool_calls"])
                        if kept is not None:
                            if kept:
                                delta["tool_calls"] = kept
                            else:
                                del delta["tool_calls"]
                            chunk.set_json(data)
                    if isinstance(delta.get("content"), str):
                        calls.content.append(delta["content"])
                    if choice.get("finish_reason") is not None:
                        held_finish = chunk
                        continue
                    if _is_empty(delta) and "usage" not in data and (turn > 0 or not delta.get("role")):
                        continue  # a turn's repeated role chunk, or a chunk that only held our calls
                    yield chunk
                await _aclose(current)
                current = None
                ours = calls.ours()
                if ours and not calls.has_theirs:
                    if not self._depth_reached(ours):
                        if held_finish is not None and _finish_content(held_finish):
                            yield _without_finish(held_finish)
                        messages: list[dict[str, Any]] = []
                        async for beat in self._run_with_heartbeats(ours, messages):
                            yield beat
                        self._append_turn("".join(calls.content), ours, messages)
                        reply = await self.next(self.ex)
                        first.finalizers.extend(reply.finalizers)
                        if reply.stream is None:
                            raise GatewayError(
                                502,
                                "the upstream answered a streamed tool turn without a stream",
                                code="upstream_error",
                            )
                        current = reply.stream
                        turn += 1
                        continue
                    if held_finish is not None:
                        _set_finish(held_finish, "length")
                for chunk in (held_finish, held_usage):
                    if chunk is not None:
                        if turn > 0 and chunk.json().get("usage") is not None:
                            data = chunk.json()
                            data["usage"] = self.ex.usage.to_openai()
                            chunk.set_json(data)
                        yield chunk
                yield StreamChunk.done()
        finally:
            if current is not None:
                await _aclose(current)

    async def _run_with_heartbeats(
        self, ours: list[dict[str, Any]], out: list[dict[str, Any]]
    ) -> AsyncIterator[StreamChunk]:
        """Run the calls, yielding SSE comments while they take time; fill `out`."""
        task = asyncio.ensure_future(self.run_calls(ours))
        try:
            names = ", ".join(sorted({_call_name(c) for c in ours}))
            yield StreamChunk.comment(f"mcp: calling {names}")
            while True:
                done, _ = await asyncio.wait({task}, timeout=self.heartbeat_seconds)
                if done:
                    break
                yield StreamChunk.comment("mcp: tools still running")
            out.extend(task.result())
        finally:
            if not task.done():
                task.cancel()

    # ------------------------------------------------------------ calling tools

    async def run_calls(self, ours: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Run one turn's calls in parallel; one `tool` message per call, in order."""
        outcomes = await asyncio.gather(*(self._call(c) for c in ours))
        return [
            {"role": "tool", "tool_call_id": c.get("id"), "content": outcome.text}
            for c, outcome in zip(ours, outcomes, strict=True)
        ]

    async def _call(self, call: dict[str, Any]) -> ToolOutcome:
        ref = self.offered[_call_name(call)]
        function = call.get("function") or {}
        raw = function.get("arguments") or "{}"
        try:
            arguments = orjson.loads(raw) if isinstance(raw, str) else raw
        except orjson.JSONDecodeError:
            arguments = None
        if not isinstance(arguments, dict):
            outcome = ToolOutcome(
                f"error: the arguments for {ref.exposed!r} are not a JSON object", "error", 0.0
            )
            self.manager.tool_calls.labels(ref.server, ref.name, "error").inc()
        else:
            outcome = await self.manager.call_tool(ref, arguments)
        duration_ms = round(outcome.duration * 1000, 3)
        self.ex.metadata.setdefault("mcp_calls", []).append(
            {"server": ref.server, "tool": ref.name, "status": outcome.status, "duration_ms": duration_ms}
        )
        log_fields(
            log,
            logging.INFO,
            "mcp tool call",
            request_id=self.ex.request_id,
            server=ref.server,
            tool=ref.name,
            status=outcome.status,
            duration_ms=duration_ms,
        )
        return outcome

    def _depth_reached(self, ours: list[dict[str, Any]]) -> bool:
        """Count this turn against each server's `max_call_depth`; True if one is used up."""
        servers = {self.offered[_call_name(c)].server for c in ours}
        for server in sorted(servers):
            depth = self.manager.max_call_depth(server)
            if self.turns.get(server, 0) >= depth:
                log_fields(
                    log,
                    logging.WARNING,
                    "mcp tool loop stopped at max_call_depth; answering with finish_reason length",
                    request_id=self.ex.request_id,
                    server=server,
                    max_call_depth=depth,
                )
                return True
        for server in servers:
            self.turns[server] = self.turns.get(server, 0) + 1
        return False

    def _append_turn(
        self, content: Any, ours: list[dict[str, Any]], tool_messages: list[dict[str, Any]]
    ) -> None:
        calls = [
            {
                "id": c.get("id"),
                "type": "function",
                "function": {
                    "name": _call_name(c),
                    "arguments": (c.get("function") or {}).get("arguments") or "{}",
                },
            }
            for c in ours
        ]
        assistant = {"role": "assistant", "content": content or None, "tool_calls": calls}
        body = self.ex.body
        assert body is not None
        body["messages"] = [*body["messages"], assistant, *tool_messages]


class _TurnCalls:
    """The tool-call deltas of one streamed turn: ours accumulated, the caller's renumbered."""

    def __init__(self, offered: dict[str, ToolRef]) -> None:
        self.offered = offered
        self.mine: dict[int, bool] = {}
        self.calls: dict[int, dict[str, Any]] = {}
        self.renumbered: dict[int, int] = {}
        self.content: list[str] = []

    @property
    def has_theirs(self) -> bool:
        return bool(self.renumbered)

    def feed(self, deltas: list[Any]) -> list[Any] | None:
        """The deltas to pass on, or None when they pass unchanged."""
        kept: list[Any] = []
        changed = False
        for d in deltas:
            if not isinstance(d, dict):
                continue
            index = d.get("index", 0)
            function = d.get("function") if isinstance(d.get("function"), dict) else {}
            if index not in self.mine:
                name = function.get("name")
                self.mine[index] = name in self.offered
                if self.mine[index]:
                    call_id = d.get("id") or f"call_mcp_{index}"
                    self.calls[index] = {
                        "id": call_id,
                        "type": "function",
                        "function": {"name": name, "arguments": ""},
                    }
                else:
                    self.renumbered[index] = len(self.renumbered)
            if self.mine[index]:
                self.calls[index]["function"]["arguments"] += function.get("arguments") or ""
                changed = True
                continue
            new_index = self.renumbered[index]
            if new_index != index:
                d = {**d, "index": new_index}
                changed = True
            kept.append(d)
        return kept if changed else None

    def ours(self) -> list[dict[str, Any]]:
        return [self.calls[i] for i in sorted(self.calls)]


def _first_choice(data: Any) -> dict[str, Any] | None:
    if not isinstance(data, dict):
        return None
    choices = data.get("choices")
    if isinstance(choices, list) and choices and isinstance(choices[0], dict):
        return choices[0]
    return None


def _call_name(call: dict[str, Any]) -> str:
    function = call.get("function")
    name = function.get("name") if isinstance(function, dict) else None
    return name if isinstance(name, str) else ""


def _is_empty(delta: dict[str, Any]) -> bool:
    return not any(v for k, v in delta.items() if k != "role")


def _finish_content(chunk: StreamChunk) -> bool:
    choice = _first_choice(chunk.json())
    delta = choice.get("delta") if choice else None
    return isinstance(delta, dict) and bool(delta.get("content"))


def _without_finish(chunk: StreamChunk) -> StreamChunk:
    data = orjson.loads(orjson.dumps(chunk.json()))
    data["choices"][0]["finish_reason"] = None
    data.pop("usage", None)
    return StreamChunk.from_json(data)


def _set_finish(chunk: StreamChunk, reason: str) -> None:
    data = chunk.json()
    choice = data["choices"][0]
    choice["finish_reason"] = reason
    delta = choice.get("delta")
    if isinstance(delta, dict):
        delta.pop("tool_calls", None)
    chunk.set_json(data)


async def _aclose(stream: AsyncIterator[StreamChunk]) -> None:
    aclose = getattr(stream, "aclose", None)
    if aclose is not None:
        await aclose()
