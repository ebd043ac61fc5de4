"""What every guardrail shares: the common options, where it screens, and acting on findings.

A guardrail subclasses `Guardrail` and implements `scan(text)` (span findings in one piece
of text) or overrides `check_input` / `check_output` for checks on the request or answer as
a whole. The base then, per the finding's action:

- block  → 400 `request_rejected` (input) / 502 `response_rejected` (output; mid-stream an
  SSE error event), the message naming the filter and the rule, never the matched text;
- redact → rewrites `ex.body` before it leaves, or the answer (whole or streamed);
- warn   → proceeds, logs at WARNING and adds `x-ferro-guardrail-warnings: filter:rule`;
- log    → proceeds, logs at INFO.

Every hit counts in `ferro_guardrail_hits_total{filter,rule,action}` and is appended to
`ex.metadata["guardrail_hits"]` for the request logger.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from typing import Any, ClassVar, Literal

from ferro_proxy.chain import Filter, Next
from ferro_proxy.config import Base
from ferro_proxy.errors import GatewayError
from ferro_proxy.exchange import Exchange, Reply, StreamChunk
from ferro_proxy.jsonlog import log_fields
from filters.guardrails.stream import (
    HoldBackScreen,
    LookBehindScreen,
    Screen,
    screen_anthropic_stream,
    screen_openai_stream,
)
from filters.guardrails.text import Finding, Segment, apply_redactions, input_segments, output_segments

log = logging.getLogger("ferro_proxy.guardrail")

Action = Literal["block", "redact", "warn", "log"]
INPUT_ENDPOINTS = frozenset({"chat", "completions", "embeddings", "images", "messages", "responses"})
RESPONSES_PATH = "/v1/responses"
OUTPUT_ENDPOINTS = frozenset({"chat", "completions", "messages"})
WARN_HEADER = "x-ferro-guardrail-warnings"
_SEVERITY = {"block": 3, "redact": 2, "warn": 1, "log": 0}


def screened_kind(ex: Exchange) -> str:
    """The endpoint whose request shape to screen: a Responses API call arrives as a
    pass-through, and its (JSON) body is screened like any other input."""
    if ex.endpoint == "passthrough" and ex.method == "POST" and ex.path.rstrip("/") == RESPONSES_PATH:
        return "responses"
    return ex.endpoint


class GuardrailConfig(Base):
    action: Action = "block"
    apply_to: Literal["input", "output", "both"] = "input"
    stream_window: int = 64  # characters held back / rescanned when screening streamed output


class Guardrail(Filter):
    type = "guardrail"
    Config: ClassVar[type[GuardrailConfig]] = GuardrailConfig
    can_redact: ClassVar[bool] = False
    directions: ClassVar[frozenset[str]] = frozenset({"input", "output"})

    def __init__(self, config: Any, gateway: Any, plugin: Any = None) -> None:
        super().__init__(config, gateway, plugin)
        self.check_action(config.action, "action")
        if config.stream_window < 1:
            raise ValueError("stream_window: must be >= 1")
        wanted = {"input", "output"} if config.apply_to == "both" else {config.apply_to}
        if not wanted <= self.directions:
            raise ValueError(f"apply_to: {self.name} screens {' and '.join(sorted(self.directions))} only")
        self.screens_input = "input" in wanted and "before_request" in self.stages
        self.screens_output = "output" in wanted and "after_request" in self.stages
        self.actions: set[str] = {config.action}  # subclasses add per-rule actions
        self.hits = gateway.metrics.counter(
            "ferro_guardrail_hits_total",
            "Guardrail findings by filter, rule and action",
            ["filter", "rule", "action"],
        )

    def check_action(self, action: str, where: str) -> None:
        if action == "redact" and not self.can_redact:
            raise ValueError(f"{where}: {self.name} cannot redact (use block, warn or log)")

    # ------------------------------------------------------------ what subclasses implement

    def scan(self, text: str) -> list[Finding]:
        """Findings in one piece of text, in order and not overlapping."""
        return []

    def check_input(self, ex: Exchange, segments: list[Segment]) -> list[Finding]:
        return self.scan_segments(segments)

    def check_output(self, segments: list[Segment]) -> list[Finding]:
        return self.scan_segments(segments)

    def output_screen(self) -> Screen:
        """A screen for one streamed choice."""
        window = self.config.stream_window
        if self.actions & {"block", "redact"}:
            return HoldBackScreen(self.scan, window)
        return LookBehindScreen(self.scan, window)

    # ------------------------------------------------------------ shared machinery

    def scan_segments(self, segments: list[Segment]) -> list[Finding]:
        findings: list[Finding] = []
        for seg in segments:
            found = self.scan(seg.text)
            if found:
                findings.extend(found)
                if any(f.action == "redact" for f in found):
                    seg.set(apply_redactions(seg.text, found))
        return findings

    async def handle(self, ex: Exchange, next: Next) -> Reply:
        kind = screened_kind(ex)
        if self.screens_input and kind in INPUT_ENDPOINTS and ex.body is not None:
            found = self.check_input(ex, input_segments(kind, ex.body))
            if found:
                self.act(ex, found, "input")
        reply = await next(ex)
        if self.screens_output and ex.endpoint in OUTPUT_ENDPOINTS and 200 <= reply.status < 300:
            if reply.stream is not None:
                reply.wrap_stream(lambda chunks: self.screen_stream(ex, chunks))
            else:
                self.screen_reply(ex, reply)
        return reply

    def screen_reply(self, ex: Exchange, reply: Reply) -> None:
        data = reply.peek_json()
        segments = output_segments(data)
        if not segments:
            return
        found = self.check_output(segments)
        if found:
            if any(f.action == "redact" for f in found):
                reply.json()  # the segments already changed the dict: mark it for re-encoding
            self.act(ex, found, "output")

    def screen_stream(self, ex: Exchange, chunks: AsyncIterator[StreamChunk]) -> AsyncIterator[StreamChunk]:
        def act(found: list[Finding]) -> None:
            self.act(ex, found, "output")

        if ex.metadata.get("native_reply"):
            return screen_anthropic_stream(chunks, self.output_screen, act)
        return screen_openai_stream(chunks, self.output_screen, act)

    def act(self, ex: Exchange, found: list[Finding], stage: str) -> None:
        """Report every finding; raise if one of them blocks."""
        label = self.label
        hits = ex.metadata.setdefault("guardrail_hits", [])
        warned: list[str] = []
        worst = found[0]
        for f in found:
            self.hits.labels(label, f.rule, f.action).inc()
            hit: dict[str, Any] = {"filter": label, "rule": f.rule, "action": f.action, "stage": stage}
            if f.detail:
                hit.update(f.detail)
            hits.append(hit)
            if f.action == "warn":
                warned.append(f"{label}:{f.rule}")
            if _SEVERITY[f.action] > _SEVERITY[worst.action]:
                worst = f
        rules = sorted({f.rule for f in found})
        fields: dict[str, Any] = {
            "request_id": ex.request_id,
            "filter": label,
            "stage": stage,
            "action": worst.action,
            "rules": rules,
            "count": len(found),
        }
        for f in found:
            if f.detail:
                fields.update(f.detail)
        level = logging.WARNING if worst.action in ("block", "warn") else logging.INFO
        log_fields(log, level, "guardrail hit", **fields)
        if warned:
            previous = ex.response_headers.get(WARN_HEADER)
            names = ([previous] if previous else []) + sorted(set(warned))
            ex.response_headers[WARN_HEADER] = ",".join(names)
        if worst.action == "block":
            raise self.blocked(worst, stage)

    def blocked(self, f: Finding, stage: str) -> GatewayError:
        note = f" ({f.note})" if f.note else ""
        if stage == "input":
            return GatewayError(
                400,
                f"request rejected by guardrail {self.label!r}: rule {f.rule!r}{note}",
                code="request_rejected",
                type="invalid_request_error",
                retryable=False,
            )
        return GatewayError(
            502,
            f"response rejected by guardrail {self.label!r}: rule {f.rule!r}{note}",
            code="response_rejected",
            type="api_error",
            retryable=False,
        )
