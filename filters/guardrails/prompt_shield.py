"""prompt-shield: scores prompt injection and jailbreak attempts from weighted signals.

Signals: instructions to ignore earlier instructions, role-play jailbreaks, attempts to
extract the system prompt, fake system / chat-template tags, encoded payloads (a base64 blob
that decodes to text; hidden instructions inside it count as their own signals), and your
`custom_signals`. A phrase inside quotes ("what does 'ignore previous instructions' mean?")
counts at `quoted_weight` of its weight: talking about an attack is not making one.

The score is the sum of the strongest match of each signal, capped at 1.0; at or above
`threshold` the request (or answer) is a hit. Only text from users and tools is screened on
input: system and developer messages are the operator's own.
"""

from __future__ import annotations

import base64
import binascii
import re
from typing import Any

import msgspec

from ferro_proxy.chain import register_filter
from ferro_proxy.config import Base
from ferro_proxy.exchange import Exchange
from filters.guardrails.base import Guardrail, GuardrailConfig
from filters.guardrails.stream import LookBehindScreen
from filters.guardrails.text import Finding, Segment

_I = re.IGNORECASE

# (name, weight, pattern, keywords): the pattern runs only on text (lower-cased) holding one
# of the keywords, which keeps clean text cheap.
Signal = tuple[str, float, re.Pattern[str], tuple[str, ...]]
BUILTIN_SIGNALS: tuple[Signal, ...] = (
    (
        "ignore_instructions",
        0.6,
        re.compile(
            r"\b(?:ignore|disregard|forget|override|bypass)\s+(?:(?:all|any|every|the|your|these|those)\s+)*"
            r"(?:(?:previous|prior|above|earlier|preceding|system|initial|original|developer)\s+)+"
            r"(?:instructions?|prompts?|rules|directions|guidelines|directives|messages?|context)\b"
            r"|\b(?:ignore|disregard)\s+all\s+(?:of\s+)?(?:your\s+)?(?:instructions|rules|guidelines)\b",
            _I,
        ),
        ("ignore", "disregard", "forget", "override", "bypass"),
    ),
    (
        "roleplay_jailbreak",
        0.6,
        re.compile(
            r"\byou\s+are\s+now\s+(?:DAN\b|an?\s+(?:unrestricted|unfiltered|uncensored|jailbroken|evil)\b)"
            r"|\bdo\s+anything\s+now\b"
            r"|\b(?:developer|god|jailbreak|DAN)\s+mode\s+(?:enabled|activated|on)\b"
            r"|\bpretend\s+(?:that\s+)?you\s+(?:are|have)\s+(?:no|not\s+bound\s+by|free\s+(?:of|from))\b[^.\n]{0,30}?"
            r"\b(?:restrictions|rules|guidelines|filters|limits|limitations)\b"
            r"|\bact\s+as\s+(?:an?\s+)?(?:unrestricted|unfiltered|uncensored|jailbroken)\b"
            r"|\bfrom\s+now\s+on,?\s+you\s+(?:are\s+no\s+longer|will\s+not\s+be)\s+(?:bound|restricted)\b",
            _I,
        ),
        ("you are now", "anything now", " mode", "pretend", "act as", "from now on"),
    ),
    (
        "system_prompt_extraction",
        0.5,
        re.compile(
            r"\b(?:reveal|show|print|repeat|output|display|leak|dump|tell\s+me|give\s+me|what\s+(?:is|are|was|were))"
            r"\s+(?:me\s+)?your\s+(?:(?:full|entire|exact|original|hidden|secret|initial|verbatim)\s+)*"
            r"(?:system\s+(?:prompt|message|instructions?)|initial\s+(?:prompt|instructions)|hidden\s+(?:prompt|instructions))"
            r"|\b(?:system\s+prompt|instructions)\s+(?:that\s+)?you\s+were\s+given\b"
            r"|\brepeat\s+(?:everything|all|the\s+(?:text|words))\s+(?:written\s+)?above\b",
            _I,
        ),
        ("system", "initial", "hidden", "above", "were given"),
    ),
    (
        "fake_system_tag",
        0.5,
        re.compile(
            r"<\|(?:im_start|im_end|system|endoftext)\|>|<</?SYS>>|\[/?INST\]|\[/?SYSTEM\]|</?system>"
            r"|^[ \t]*#{2,}[ \t]*(?:system|new\s+instructions?)[ \t]*:?[ \t]*$"
            r"|^[ \t]*system[ \t]*:[ \t]",
            _I | re.MULTILINE,
        ),
        ("<|", "<<", "[inst", "[/inst", "system"),
    ),
    (
        "encoded_instructions",
        0.5,
        re.compile(
            r"\b(?:decode|decipher|translate)\b[^.\n]{0,40}\b(?:base64|rot13|hex|binary)\b[^.\n]{0,60}"
            r"\b(?:follow|execute|obey|run|do\s+what)\b",
            _I,
        ),
        ("base64", "rot13", "hex", "binary"),
    ),
)
ENCODED_WEIGHT = 0.4
_BASE64_BLOB = re.compile(r"(?<![A-Za-z0-9+/=])[A-Za-z0-9+/]{48,}={0,2}(?![A-Za-z0-9+/=])")
_QUOTES = frozenset("\"'`“”‘’«»")
SCREENED_ROLES = frozenset({"user", "tool", "function"})


class CustomSignal(Base):
    name: str
    pattern: str
    weight: float = 0.5


class PromptShieldConfig(GuardrailConfig, kw_only=True):
    threshold: float = 0.5
    quoted_weight: float = 0.25  # factor for a phrase that is quoted rather than said
    custom_signals: list[CustomSignal] = msgspec.field(default_factory=list)
    builtin_signals: bool = True


def _decoded_text(blob: str) -> str | None:
    try:
        raw = base64.b64decode(blob + "=" * (-len(blob) % 4))
    except (binascii.Error, ValueError):
        return None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        return None
    printable = sum(ch.isprintable() or ch in "\n\t" for ch in text)
    return text if text and printable / len(text) > 0.95 else None


def _quoted(text: str, start: int, end: int) -> bool:
    before = text[max(0, start - 2) : start]
    after = text[end : end + 3]
    return any(ch in _QUOTES for ch in before) and any(ch in _QUOTES for ch in after)


@register_filter
class PromptShield(Guardrail):
    name = "prompt-shield"
    description = "Scores prompt injection and jailbreak signals; acts at a threshold."
    Config = PromptShieldConfig

    def __init__(self, config: PromptShieldConfig, gateway: Any, plugin: Any = None) -> None:
        super().__init__(config, gateway, plugin)
        if not 0 < config.threshold <= 1:
            raise ValueError("threshold: must be > 0 and <= 1")
        if not 0 <= config.quoted_weight <= 1:
            raise ValueError("quoted_weight: must be between 0 and 1")
        signals = list(BUILTIN_SIGNALS) if config.builtin_signals else []
        for i, custom in enumerate(config.custom_signals):
            try:
                compiled = re.compile(custom.pattern, _I)
            except re.error as exc:
                raise ValueError(f"custom_signals[{i}].pattern: bad regular expression: {exc}") from None
            if custom.weight <= 0:
                raise ValueError(f"custom_signals[{i}].weight: must be > 0")
            signals.append((custom.name, custom.weight, compiled, ()))
        if not signals:
            raise ValueError("no signals: enable builtin_signals or add custom_signals")
        self.signals = signals

    # ------------------------------------------------------------ signals

    def signal_findings(self, text: str, decode: bool = True) -> list[Finding]:
        """One finding per signal match, with its (quote-damped) weight in `detail`."""
        found = []
        quoted_weight = self.config.quoted_weight
        lowered = text.lower()
        for name, weight, pattern, keywords in self.signals:
            if keywords and not any(k in lowered for k in keywords):
                continue
            for m in pattern.finditer(text):
                start, end = m.span()
                w = weight * quoted_weight if _quoted(text, start, end) else weight
                found.append(Finding(name, self.config.action, start, end, detail={"weight": w}))
        if decode and max(map(len, text.split()), default=0) >= 48:
            for m in _BASE64_BLOB.finditer(text):
                decoded = _decoded_text(m.group())
                if decoded is None:
                    continue
                start, end = m.span()
                found.append(
                    Finding(
                        "encoded_payload", self.config.action, start, end, detail={"weight": ENCODED_WEIGHT}
                    )
                )
                for hidden in self.signal_findings(decoded, decode=False):
                    found.append(Finding(hidden.rule, hidden.action, start, end, detail=hidden.detail))
        return found

    def verdict(self, weights: dict[str, float]) -> Finding | None:
        score = min(1.0, sum(weights.values()))
        if score < self.config.threshold:
            return None
        top = max(weights, key=lambda k: weights[k])
        return Finding(
            top,
            self.config.action,
            note=f"score {score:.2f} >= {self.config.threshold:g}",
            detail={"score": round(score, 3), "signals": sorted(weights)},
        )

    # ------------------------------------------------------------ the guardrail

    def _judge(self, texts: list[str]) -> list[Finding]:
        weights: dict[str, float] = {}
        for text in texts:
            for f in self.signal_findings(text):
                w = f.detail["weight"] if f.detail else 0.0
                if w > weights.get(f.rule, 0.0):
                    weights[f.rule] = w
        verdict = self.verdict(weights) if weights else None
        return [verdict] if verdict is not None else []

    def check_input(self, ex: Exchange, segments: list[Segment]) -> list[Finding]:
        return self._judge([s.text for s in segments if s.role in SCREENED_ROLES])

    def check_output(self, segments: list[Segment]) -> list[Finding]:
        return self._judge([s.text for s in segments])

    def output_screen(self) -> ShieldScreen:
        return ShieldScreen(self)


class ShieldScreen:
    """Streamed output: signals found in a look-behind window add up over the whole answer."""

    __slots__ = ("shield", "lookbehind", "weights", "fired")

    def __init__(self, shield: PromptShield) -> None:
        self.shield = shield
        self.lookbehind = LookBehindScreen(shield.signal_findings, shield.config.stream_window)
        self.weights: dict[str, float] = {}
        self.fired = False

    def feed(self, text: str) -> tuple[str, list[Finding]]:
        out, found = self.lookbehind.feed(text)
        if self.fired or not found:
            return out, []
        for f in found:
            w = f.detail["weight"] if f.detail else 0.0
            if w > self.weights.get(f.rule, 0.0):
                self.weights[f.rule] = w
        verdict = self.shield.verdict(self.weights)
        if verdict is None:
            return out, []
        self.fired = True
        return out, [verdict]

    def finish(self) -> tuple[str, list[Finding]]:
        return "", []
