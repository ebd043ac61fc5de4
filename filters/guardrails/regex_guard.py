"""regex-guard: your own named rules, each a regular expression with its own action."""

from __future__ import annotations

import re
from re import _parser as sre_parse  # noqa: PLC2701 - the stdlib parser, to find literals
from typing import Any

import msgspec

from ferro_proxy.chain import register_filter
from ferro_proxy.config import Base
from filters.guardrails.base import Action, Guardrail, GuardrailConfig
from filters.guardrails.text import Finding, drop_overlaps


def required_literal(pattern: str, flags: int) -> str | None:
    """The longest run of literal characters every match must contain (from the pattern's
    top-level sequence only), used as a cheap `in` test before the regex scan."""
    try:
        items = list(sre_parse.parse(pattern, flags))
    except (re.error, TypeError, ValueError):
        return None
    best, run = "", []
    for op, value in [*items, (None, None)]:
        if op is sre_parse.LITERAL:
            run.append(chr(value))
            continue
        if len(run) > len(best):
            best = "".join(run)
        run = []
    return best if len(best) >= 2 else None


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
        self.rules: list[tuple[str, re.Pattern[str], str, str, str | None, bool]] = []
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
            folded = bool(compiled.flags & re.IGNORECASE)  # also set by an inline (?i)
            literal = required_literal(rule.pattern, compiled.flags)
            if literal is not None and folded:
                literal = literal.lower()
            self.rules.append((rule.name, compiled, action, replacement, literal, folded))

    def scan(self, text: str) -> list[Finding]:
        lowered: str | None = None
        found = []
        for name, pattern, action, replacement, literal, folded in self.rules:
            if literal is not None:
                if folded:
                    if lowered is None:
                        lowered = text.lower()
                    if literal not in lowered and len(lowered) == len(text):
                        continue
                elif literal not in text:
                    continue
            for m in pattern.finditer(text):
                if m.end() > m.start():
                    found.append(Finding(name, action, m.start(), m.end(), replacement))
        return drop_overlaps(found)
