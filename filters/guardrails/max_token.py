"""max-token: caps on what one request may ask for: max_tokens, the number of messages and
the input length (characters, or tokens estimated at about four characters each)."""

from __future__ import annotations

from typing import Any, Literal

from ferro_proxy.chain import register_filter
from ferro_proxy.exchange import Exchange
from filters.guardrails.base import Guardrail, GuardrailConfig
from filters.guardrails.text import Finding, Segment

CHARS_PER_TOKEN = 4  # the usual rule of thumb for English text with BPE tokenizers


class MaxTokenConfig(GuardrailConfig, kw_only=True):
    max_tokens: int | None = None  # the largest max_tokens / max_completion_tokens a client may ask for
    max_messages: int | None = None
    max_input_length: int | None = None
    length_unit: Literal["characters", "tokens"] = "characters"


def estimate_tokens(chars: int) -> int:
    return (chars + CHARS_PER_TOKEN - 1) // CHARS_PER_TOKEN


@register_filter
class MaxToken(Guardrail):
    name = "max-token"
    description = "Caps max_tokens, the message count and the input length of a request."
    Config = MaxTokenConfig
    directions = frozenset({"input"})

    def __init__(self, config: MaxTokenConfig, gateway: Any, plugin: Any = None) -> None:
        super().__init__(config, gateway, plugin)
        limits = {
            "max_tokens": config.max_tokens,
            "max_messages": config.max_messages,
            "max_input_length": config.max_input_length,
        }
        if all(v is None for v in limits.values()):
            raise ValueError("set at least one of max_tokens, max_messages, max_input_length")
        for key, value in limits.items():
            if value is not None and value < 1:
                raise ValueError(f"{key}: must be >= 1")

    def check_input(self, ex: Exchange, segments: list[Segment]) -> list[Finding]:
        cfg = self.config
        body = ex.body or {}
        found: list[Finding] = []
        if cfg.max_tokens is not None:
            asked = body.get("max_completion_tokens", body.get("max_tokens", body.get("max_output_tokens")))
            if isinstance(asked, int) and not isinstance(asked, bool) and asked > cfg.max_tokens:
                found.append(self._finding("max_tokens", f"asked {asked}, limit {cfg.max_tokens}"))
        if cfg.max_messages is not None:
            messages = body.get("messages")
            if isinstance(messages, list) and len(messages) > cfg.max_messages:
                found.append(
                    self._finding("max_messages", f"{len(messages)} messages, limit {cfg.max_messages}")
                )
        if cfg.max_input_length is not None:
            length = sum(len(s.text) for s in segments)
            unit = cfg.length_unit
            if unit == "tokens":
                length = estimate_tokens(length)
            if length > cfg.max_input_length:
                size = f"about {length} tokens" if unit == "tokens" else f"{length} characters"
                found.append(self._finding("max_input_length", f"{size}, limit {cfg.max_input_length}"))
        return found

    def _finding(self, rule: str, note: str) -> Finding:
        return Finding(rule, self.config.action, note=note)
