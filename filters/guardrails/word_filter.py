"""word-filter: block (or mask, warn about, log) configured words and phrases."""

from __future__ import annotations

import re
from typing import Any

import msgspec

from ferro_proxy.chain import register_filter
from filters.guardrails.base import Guardrail, GuardrailConfig
from filters.guardrails.text import Finding


class WordFilterConfig(GuardrailConfig, kw_only=True):
    blocked_words: list[str] = msgspec.field(default_factory=list)
    case_sensitive: bool = False
    whole_word: bool = True  # "ass" does not match "class"


@register_filter
class WordFilter(Guardrail):
    name = "word-filter"
    description = "Blocks, masks, warns about or logs configured words and phrases."
    Config = WordFilterConfig
    can_redact = True

    def __init__(self, config: WordFilterConfig, gateway: Any, plugin: Any = None) -> None:
        super().__init__(config, gateway, plugin)
        words = [w for w in (w.strip() for w in config.blocked_words) if w]
        if not words:
            raise ValueError("blocked_words: list at least one word")
        # Longest first so a phrase wins over a word it starts with.
        alternation = "|".join(re.escape(w) for w in sorted(set(words), key=len, reverse=True))
        if config.whole_word:
            alternation = rf"(?<!\w)(?:{alternation})(?!\w)"
        self.pattern = re.compile(alternation, 0 if config.case_sensitive else re.IGNORECASE)
        self.action = config.action
        self.case_sensitive = config.case_sensitive
        # Plain substring tests first: most text holds none of the words, and `in` is far
        # cheaper than a case-insensitive regex scan.
        self.needles = tuple(set(words if config.case_sensitive else (w.lower() for w in words)))

    def scan(self, text: str) -> list[Finding]:
        haystack = text if self.case_sensitive else text.lower()
        if not any(n in haystack for n in self.needles) and len(haystack) == len(text):
            return []
        action = self.action
        return [
            Finding("blocked_word", action, m.start(), m.end(), replacement="*" * (m.end() - m.start()))
            for m in self.pattern.finditer(text)
        ]
