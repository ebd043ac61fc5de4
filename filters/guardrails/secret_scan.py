"""secret-scan: credentials in prompts or answers: cloud and vendor API keys, private keys,
database URLs with a password, JWTs, high-entropy tokens, and your own `patterns`."""

from __future__ import annotations

import math
import re
from collections import Counter
from dataclasses import dataclass
from typing import Any

import msgspec

from ferro_proxy.chain import register_filter
from ferro_proxy.config import Base
from filters.guardrails.base import Action, Guardrail, GuardrailConfig
from filters.guardrails.text import Finding, drop_overlaps


@dataclass(frozen=True, slots=True)
class Rule:
    name: str
    pattern: re.Pattern[str]
    hints: tuple[str, ...] = ()  # substrings one of which must be present (cheap pre-check)
    action: str | None = None  # custom patterns may override the filter's action


_PLACEHOLDER_PASSWORDS = frozenset({"password", "pass", "passwd", "secret", "changeme", "xxx", "xxxx", "..."})

BUILTIN_RULES: tuple[Rule, ...] = (
    Rule(
        "private_key",
        re.compile(
            r"-----BEGIN (?:[A-Z0-9]+ )*PRIVATE KEY(?: BLOCK)?-----[\s\S]*?(?:-----END (?:[A-Z0-9]+ )*PRIVATE KEY(?: BLOCK)?-----|\Z)"
        ),
        ("PRIVATE KEY",),
    ),
    Rule(
        "aws_access_key",
        re.compile(r"(?<![A-Z0-9])(?:AKIA|ASIA|ABIA|ACCA)[0-9A-Z]{16}(?![A-Z0-9])"),
        ("AKIA", "ASIA", "ABIA", "ACCA"),
    ),
    Rule(
        "aws_secret_key",
        re.compile(r"(?i:aws.{0,20}?secret.{0,20}?[\"'=:\s]{1,4})([A-Za-z0-9/+]{40})(?![A-Za-z0-9/+=])"),
        ("secret", "SECRET", "Secret"),
    ),
    Rule("anthropic_api_key", re.compile(r"\bsk-ant-[a-z]{2,8}\d{2}-[A-Za-z0-9_-]{40,}"), ("sk-ant-",)),
    Rule("ferro_gateway_key", re.compile(r"\bsk-ferro-[A-Za-z0-9_-]{16,}"), ("sk-ferro-",)),
    Rule(
        "openai_api_key",
        re.compile(r"\bsk-(?!ant-|ferro-)(?:proj-|svcacct-|admin-|None-)?[A-Za-z0-9_-]{20,}"),
        ("sk-",),
    ),
    Rule(
        "github_token",
        re.compile(r"\b(?:gh[pousr]_[A-Za-z0-9]{36,}|github_pat_[A-Za-z0-9_]{60,})"),
        ("ghp_", "gho_", "ghu_", "ghs_", "ghr_", "github_pat_"),
    ),
    Rule(
        "gitlab_token",
        re.compile(r"\bgl(?:pat|dt|ptt|rt)-[A-Za-z0-9_-]{20,}"),
        ("glpat-", "gldt-", "glptt-", "glrt-"),
    ),
    Rule("slack_token", re.compile(r"\bxox[abposr]-[A-Za-z0-9-]{10,}"), ("xox",)),
    Rule(
        "slack_webhook",
        re.compile(r"https://hooks\.slack\.com/services/T[A-Za-z0-9]+/B[A-Za-z0-9]+/[A-Za-z0-9]{16,}"),
        ("hooks.slack.com",),
    ),
    Rule("stripe_key", re.compile(r"\b(?:sk|rk)_(?:live|test)_[A-Za-z0-9]{20,}"), ("_live_", "_test_")),
    Rule("huggingface_token", re.compile(r"\bhf_[A-Za-z0-9]{30,40}\b"), ("hf_",)),
    Rule("google_api_key", re.compile(r"\bAIza[0-9A-Za-z_-]{35}(?![0-9A-Za-z_-])"), ("AIza",)),
    Rule(
        "database_url",
        re.compile(
            r"\b(?:postgres(?:ql)?|mysql|mariadb|mongodb(?:\+srv)?|rediss?|amqps?|mssql|sqlserver)://"
            r"[^\s:/@]+:([^\s@/]+)@[^\s/?#\"']+"
        ),
        ("://",),
    ),
    Rule(
        "jwt",
        re.compile(r"\beyJ[A-Za-z0-9_-]{10,}\.eyJ[A-Za-z0-9_-]{10,}\.[A-Za-z0-9_-]{16,}"),
        ("eyJ",),
    ),
)
BUILTIN_NAMES = frozenset(r.name for r in BUILTIN_RULES)

# Well-known identifiers that look random but are public by design (Stripe publishable keys).
_PUBLIC_PREFIXES = ("pk_live_", "pk_test_")
_TOKEN = re.compile(r"(?<![A-Za-z0-9+/=_-])[A-Za-z0-9+/=_-]{20,}(?![A-Za-z0-9+/=_-])")


def shannon_entropy(token: str) -> float:
    n = len(token)
    return -sum(c / n * math.log2(c / n) for c in Counter(token).values())


def _mixed(token: str) -> bool:
    """Upper case, lower case and digits together: what random keys look like, words do not."""
    upper = lower = digit = False
    for ch in token:
        if ch.isdigit():
            digit = True
        elif ch.isupper():
            upper = True
        elif ch.islower():
            lower = True
    return upper and lower and digit


class CustomPattern(Base):
    name: str
    pattern: str
    action: Action | None = None


class SecretScanConfig(GuardrailConfig, kw_only=True):
    rules: list[str] | None = None  # built-in rules to use; default: all
    patterns: list[CustomPattern] = msgspec.field(default_factory=list)
    entropy: bool = True
    entropy_threshold: float = 4.5  # bits per character
    entropy_min_length: int = 32


@register_filter
class SecretScan(Guardrail):
    name = "secret-scan"
    description = (
        "Catches API keys, private keys, database URLs with passwords, JWTs and high-entropy tokens."
    )
    Config = SecretScanConfig
    can_redact = True

    def __init__(self, config: SecretScanConfig, gateway: Any, plugin: Any = None) -> None:
        super().__init__(config, gateway, plugin)
        wanted = config.rules
        if wanted is not None:
            unknown = [n for n in wanted if n not in BUILTIN_NAMES]
            if unknown:
                raise ValueError(
                    f"rules: unknown rule {unknown[0]!r} (known: {', '.join(sorted(BUILTIN_NAMES))})"
                )
        rules = [r for r in BUILTIN_RULES if wanted is None or r.name in wanted]
        for i, custom in enumerate(config.patterns):
            try:
                compiled = re.compile(custom.pattern)
            except re.error as exc:
                raise ValueError(f"patterns[{i}].pattern: bad regular expression: {exc}") from None
            if custom.action is not None:
                self.check_action(custom.action, f"patterns[{i}].action")
                self.actions.add(custom.action)
            rules.append(Rule(custom.name, compiled, (), custom.action))
        self.rules = rules
        if config.entropy_min_length < 8:
            raise ValueError("entropy_min_length: must be >= 8")

    def scan(self, text: str) -> list[Finding]:
        action = self.config.action
        found: list[Finding] = []
        for rule in self.rules:
            if rule.hints and not any(h in text for h in rule.hints):
                continue
            for m in rule.pattern.finditer(text):
                if rule.name == "database_url" and _placeholder(m.group(1)):
                    continue
                start, end = m.span(m.lastindex or 0) if rule.name == "aws_secret_key" else m.span()
                if end > start:
                    found.append(
                        Finding(rule.name, rule.action or action, start, end, f"[REDACTED:{rule.name}]")
                    )
        if self.config.entropy:
            found.extend(self._entropy(text, found, action))
        return drop_overlaps(found)

    def _entropy(self, text: str, known: list[Finding], action: str) -> list[Finding]:
        cfg = self.config
        out = []
        min_length = cfg.entropy_min_length
        # Only whitespace-separated words long enough to hold a token are searched.
        if max(map(len, text.split()), default=0) < min_length:
            return out
        for m in _TOKEN.finditer(text):
            token = m.group()
            if len(token) < min_length or token.startswith(_PUBLIC_PREFIXES) or not _mixed(token):
                continue
            start, end = m.span()
            if any(f.start < end and start < f.end for f in known):
                continue
            if shannon_entropy(token) >= cfg.entropy_threshold:
                out.append(Finding("high_entropy", action, start, end, "[REDACTED:high_entropy]"))
        return out


def _placeholder(password: str) -> bool:
    return (
        password.lower() in _PLACEHOLDER_PASSWORDS
        or password.startswith(("$", "<", "{", "%"))
        or set(password) <= {"*", "x", "X", "."}
    )
