"""The text guardrails screen: where it sits in request and reply bodies, and rewriting it.

A `Segment` is one string inside a body (a message's content, a text part, a prompt, an
embeddings input) with a way to put a rewritten string back in place, so redaction changes
`ex.body` (or the reply dict) without rebuilding it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(slots=True)
class Finding:
    """One thing a guardrail found. `start`/`end` locate it in the screened text (0/0 when it
    concerns the request as a whole); `note` is extra detail that is safe to show a client
    (never the matched text); `detail` goes to logs only."""

    rule: str
    action: str
    start: int = 0
    end: int = 0
    replacement: str | None = None
    note: str | None = None
    detail: dict[str, Any] | None = None


@dataclass(slots=True)
class Segment:
    text: str
    container: Any  # the dict or list holding the string
    key: Any
    role: str = "user"

    def set(self, value: str) -> None:
        self.text = value
        self.container[self.key] = value


TEXT_PART_TYPES = frozenset({"text", "input_text", "output_text"})


def _content_segments(holder: dict[str, Any], key: str, role: str, out: list[Segment]) -> None:
    content = holder.get(key)
    if isinstance(content, str):
        out.append(Segment(content, holder, key, role))
    elif isinstance(content, list):
        for part in content:
            if isinstance(part, dict) and part.get("type") in TEXT_PART_TYPES:
                text = part.get("text")
                if isinstance(text, str):
                    out.append(Segment(text, part, "text", role))


def _string_or_list(holder: dict[str, Any], key: str, role: str, out: list[Segment]) -> None:
    value = holder.get(key)
    if isinstance(value, str):
        out.append(Segment(value, holder, key, role))
    elif isinstance(value, list):
        for i, item in enumerate(value):
            if isinstance(item, str):
                out.append(Segment(item, value, i, role))


def _responses_segments(body: dict[str, Any], out: list[Segment]) -> None:
    """OpenAI Responses API requests: `instructions`, and `input` as a string or a list of
    message items (string or `input_text` parts) and `function_call_output` items."""
    _content_segments(body, "instructions", "system", out)
    items = body.get("input")
    if isinstance(items, str):
        out.append(Segment(items, body, "input", "user"))
        return
    if not isinstance(items, list):
        return
    for item in items:
        if not isinstance(item, dict):
            continue
        role = item.get("role")
        if isinstance(role, str):
            _content_segments(item, "content", role, out)
        elif item.get("type") == "function_call_output" and isinstance(item.get("output"), str):
            out.append(Segment(item["output"], item, "output", "tool"))


def input_segments(endpoint: str, body: dict[str, Any] | None) -> list[Segment]:
    """Every piece of client text in a request body (token-id arrays are not text)."""
    out: list[Segment] = []
    if not isinstance(body, dict):
        return out
    if endpoint in ("chat", "messages"):
        if endpoint == "messages":
            _content_segments(body, "system", "system", out)
        messages = body.get("messages")
        if isinstance(messages, list):
            for message in messages:
                if isinstance(message, dict):
                    role = message.get("role")
                    _content_segments(message, "content", role if isinstance(role, str) else "user", out)
    elif endpoint == "completions":
        _string_or_list(body, "prompt", "user", out)
    elif endpoint == "embeddings":
        _string_or_list(body, "input", "user", out)
    elif endpoint == "images":
        _string_or_list(body, "prompt", "user", out)
    elif endpoint == "responses":
        _responses_segments(body, out)
    return out


def output_segments(data: Any) -> list[Segment]:
    """The model's text in a whole (non-streamed) answer: OpenAI chat or completions choices,
    or an Anthropic Messages body passed through natively."""
    out: list[Segment] = []
    if not isinstance(data, dict):
        return out
    choices = data.get("choices")
    if isinstance(choices, list):
        for choice in choices:
            if not isinstance(choice, dict):
                continue
            message = choice.get("message")
            if isinstance(message, dict):
                _content_segments(message, "content", "assistant", out)
            elif isinstance(choice.get("text"), str):
                out.append(Segment(choice["text"], choice, "text", "assistant"))
    elif data.get("type") == "message":
        _content_segments(data, "content", "assistant", out)
    return out


def drop_overlaps(findings: list[Finding]) -> list[Finding]:
    """Keep the first (and at a tie, the longest) of overlapping findings, in text order."""
    if len(findings) < 2:
        return findings
    findings.sort(key=lambda f: (f.start, f.start - f.end))
    kept: list[Finding] = []
    end = -1
    for f in findings:
        if f.start >= end:
            kept.append(f)
            end = f.end
    return kept


def apply_redactions(text: str, findings: list[Finding]) -> str:
    """Replace each redact finding's span with its replacement (findings must not overlap)."""
    spans = sorted((f for f in findings if f.action == "redact" and f.end > f.start), key=lambda f: f.start)
    if not spans:
        return text
    parts: list[str] = []
    pos = 0
    for f in spans:
        if f.start < pos:
            continue
        parts.append(text[pos : f.start])
        parts.append(f.replacement if f.replacement is not None else f"[REDACTED:{f.rule}]")
        pos = f.end
    parts.append(text[pos:])
    return "".join(parts)
