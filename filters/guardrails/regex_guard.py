"""regex-guard: your own named rules, each a regular expression with its own action."""

from __future__ import annotations

import re
from typing import Any

import msgspec

from ferro_proxy.chain import register_filter
from ferro_proxy.config import Base
from filters.guardrails.base import Action, Guardrail, GuardrailConfig
from filters.guardrails.text import Finding, drop_overlaps


class RegexRule(Base):
    name: str
    pattern: str
    action: Action | None = None  # default: the filter's action
    ignore_case: bool = False
    replacement: str | None = None  # for redact; default "[REDACTED:<name>]"


class RegexGuardConfig(GuardrailConfig, kw_only=True):
    rules: list[RegexRule] = msgspec.field(default_factory=list)


@register_filter
class RegexGuard(Guardrail):
    name = "regex-guard"
    description = "Named regular-expression rules, each with its own action."
    Config = RegexGuardConfig
    can_redact = True

    def __init__(self, config: RegexGuardConfig, gateway: Any, plugin: Any = None) -> None:
        super().__init__(config, gateway, plugin)
        if not config.rules:
            raise ValueError("rules: list at least one {name, pattern}")
        self.rules: list[tuple[RegexRule, re.Pattern[str], str, str]] = []
        seen: set[str] = set()
        for i, rule in enumerate(config.rules):
            if not rule.name or rule.name in seen:
                raise ValueError(f"rules[{i}].name: must be set and unique")
            seen.add(rule.name)
            try:
                compiled = re.compile(rule.pattern, re.IGNORECASE if rule.ignore_case else 0)
            except re.error as exc:
                raise ValueError(f"rules[{i}].pattern: bad regular expression: {exc}") from None
            if compiled.match("") is not None:
                raise ValueError(f"rules[{i}].pattern: matches the empty string")
            action = rule.action or config.action
            self.check_action(action, f"rules[{i}].action")
            self.actions.add(action)
            replacement = rule.replacement if rule.replacement is not None else f"[REDACTED:{rule.name}]"
            self.rules.append((rule, compiled, action, replacement))

    def scan(self, text: str) -> list[Finding]:
        found = [
            Finding(rule.name, action, m.start(), m.end(), replacement)
            for rule, pattern, action, replacement in self.rules
            for m in pattern.finditer(text)
            if m.end() > m.start()
        ]
        return drop_overlaps(found)
