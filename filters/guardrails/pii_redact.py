"""pii-redact: finds personal data and redacts it (or blocks, warns, logs), per entity.

Entities: email, phone, credit_card (Luhn-checked), ssn (US, invalid ranges excluded),
ipv4, ipv6 (validated), iban (mod-97 checksum), aws_access_key, passport (an id that
follows the word "passport"). Each candidate a regex finds is checked by a validator, so a
Luhn-invalid card number or an IBAN with a bad checksum is left alone.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import re
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import msgspec

from ferro_proxy.chain import register_filter
from filters.guardrails.base import Action, Guardrail, GuardrailConfig
from filters.guardrails.text import Finding, drop_overlaps


def luhn_ok(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = ord(ch) - 48
        if i % 2:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def _card(candidate: str) -> str | None:
    digits = re.sub(r"[ -]", "", candidate)
    if 13 <= len(digits) <= 19 and digits[0] in "23456" and luhn_ok(digits):
        return candidate
    return None


def _ssn(candidate: str) -> str | None:
    area, group, serial = candidate.split("-")
    if area in ("000", "666") or area[0] == "9" or group == "00" or serial == "0000":
        return None
    return candidate


def _phone(candidate: str) -> str | None:
    digits = sum(ch.isdigit() for ch in candidate)
    return candidate if 10 <= digits <= 15 else None


def _ipv6(candidate: str) -> str | None:
    if candidate.count(":") < 2 or not any(ch not in ":0" for ch in candidate):
        return None
    try:
        ipaddress.IPv6Address(candidate)
    except ValueError:
        return None
    return candidate


# Lengths by country for the commonest IBAN countries; others need only pass the checksum.
IBAN_LENGTHS = {
    "AT": 20,
    "BE": 16,
    "CH": 21,
    "CZ": 24,
    "DE": 22,
    "DK": 18,
    "ES": 24,
    "FI": 18,
    "FR": 27,
    "GB": 22,
    "GR": 27,
    "HU": 28,
    "IE": 22,
    "IT": 27,
    "LU": 20,
    "NL": 18,
    "NO": 15,
    "PL": 28,
    "PT": 25,
    "SE": 24,
}


def iban_ok(iban: str) -> bool:
    if not 15 <= len(iban) <= 34:
        return False
    expected = IBAN_LENGTHS.get(iban[:2])
    if expected is not None and len(iban) != expected:
        return False
    rearranged = iban[4:] + iban[:4]
    number = "".join(str(int(ch, 36)) for ch in rearranged)
    return int(number) % 97 == 1


def _iban(candidate: str) -> str | None:
    # The pattern may have swallowed a trailing word in capitals: retry without it.
    groups = candidate.split(" ")
    while groups:
        if iban_ok("".join(groups)):
            return " ".join(groups)
        if len(groups) == 1:
            return None
        groups.pop()
    return None


# Every number-shaped entity holds a digit followed by five or more digits or separators;
# one fast search (a pattern that starts with a character class) rules them all out at once.
_NUMBERISH = re.compile(r"\d[\d .()+-]{5,}")


def _numberish(text: str) -> bool:
    return _NUMBERISH.search(text) is not None


@dataclass(frozen=True, slots=True)
class Entity:
    name: str
    pattern: re.Pattern[str]
    validate: Callable[[str], str | None] | None = None  # -> the (possibly trimmed) match, or None
    hint: Callable[[str], bool] | None = None  # a cheap test that the text may hold one
    group: int = 0


ENTITIES: dict[str, Entity] = {
    e.name: e
    for e in (
        Entity(
            "email",
            # Local part, then '@': matched from the '@' (a literal the search jumps to) and
            # the local part found by walking back, see `_email_start`.
            re.compile(r"@(?:[A-Za-z0-9-]+\.)+[A-Za-z]{2,24}(?![\w-])"),
            hint=lambda t: "@" in t,
        ),
        Entity(
            "credit_card",
            # The look-behind comes after the first digit so the search can skip to digits.
            re.compile(r"\d(?<![\d-]\d)(?:[ -]?\d){12,18}(?!\d)"),
            _card,
            _numberish,
        ),
        Entity("ssn", re.compile(r"\d(?<![\d-]\d)\d\d-\d{2}-\d{4}(?![\d-])"), _ssn, _numberish),
        Entity(
            "phone",
            re.compile(
                r"(?<![\w+])(?:\+\d{1,3}[ .-]?\(?\d{1,4}\)?(?:[ .-]?\d{2,4}){2,4}"
                r"|\(\d{3}\)[ .-]?\d{3}[ .-]\d{4}|\d{3}[ .-]\d{3}[ .-]\d{4})(?![\w])"
            ),
            _phone,
            _numberish,
        ),
        Entity(
            "ipv4",
            re.compile(
                r"(?<![\w.])(?:(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)\.){3}(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)"
                r"(?!\w|\.\d)"
            ),
            hint=_numberish,
        ),
        Entity(
            "ipv6",
            re.compile(r"(?<![\w:])(?:[0-9A-Fa-f]{0,4}:){2,7}[0-9A-Fa-f]{0,4}(?![\w:])"),
            _ipv6,
            hint=lambda t: "::" in t or t.count(":") >= 3,
        ),
        Entity(
            "iban",
            re.compile(
                r"(?<![A-Z0-9])[A-Z]{2}\d{2}(?: ?[A-Z0-9]{4}){2,7}(?: ?[A-Z0-9]{1,3})?(?![A-Za-z0-9])"
            ),
            _iban,
            _numberish,
        ),
        Entity(
            "aws_access_key",
            re.compile(r"(?<![A-Z0-9])(?:AKIA|ASIA)[0-9A-Z]{16}(?![A-Z0-9])"),
            hint=lambda t: "AKIA" in t or "ASIA" in t,
        ),
        Entity(
            "passport",
            re.compile(
                r"(?i:\bpassport(?:\s+(?:no\.?|number|num\.?|id|#))?\s*[:#]?\s*)"
                r"(?=[A-Z0-9]*\d)([A-Z0-9]{6,9})(?![A-Za-z0-9])"
            ),
            hint=lambda t: "assport" in t or "ASSPORT" in t,
            group=1,
        ),
    )
}

KEEP_LAST_FOUR = frozenset({"credit_card"})
_LOCAL_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._%+-")


def _email_start(text: str, at: int) -> int:
    """Where the local part before the '@' at `at` starts (== at when there is none)."""
    start = at
    while start > 0 and text[start - 1] in _LOCAL_CHARS:
        start -= 1
    return start


class PiiRedactConfig(GuardrailConfig, kw_only=True):
    action: Action = "redact"
    entities: list[str] | None = None  # default: all of them
    entity_actions: dict[str, Action] = msgspec.field(default_factory=dict)
    redact_mode: Literal["mask", "replace_type", "hash"] = "replace_type"
    hash_key: str | None = None  # HMAC key for redact_mode hash; default: random per process


@register_filter
class PiiRedact(Guardrail):
    name = "pii-redact"
    description = "Redacts personal data: email, phone, cards, SSN, IPs, IBAN, AWS keys, passport ids."
    Config = PiiRedactConfig
    can_redact = True

    def __init__(self, config: PiiRedactConfig, gateway: Any, plugin: Any = None) -> None:
        super().__init__(config, gateway, plugin)
        names = config.entities if config.entities is not None else list(ENTITIES)
        for where, listed in (("entities", names), ("entity_actions", list(config.entity_actions))):
            unknown = [n for n in listed if n not in ENTITIES]
            if unknown:
                raise ValueError(f"{where}: unknown entity {unknown[0]!r} (known: {', '.join(ENTITIES)})")
        for name, action in config.entity_actions.items():
            self.check_action(action, f"entity_actions.{name}")
        self.entities = [ENTITIES[n] for n in names]
        self.entity_action = {n: config.entity_actions.get(n, config.action) for n in names}
        self.actions = set(self.entity_action.values())
        self.hash_key = (config.hash_key or secrets.token_hex(32)).encode()

    def scan(self, text: str) -> list[Finding]:
        found: list[Finding] = []
        numberish: bool | None = None
        for entity in self.entities:
            if entity.hint is _numberish:
                if numberish is None:
                    numberish = _numberish(text)
                if not numberish:
                    continue
            elif entity.hint is not None and not entity.hint(text):
                continue
            for m in entity.pattern.finditer(text):
                start, end = m.span(entity.group)
                if entity.name == "email":
                    start = _email_start(text, start)
                    if start == m.start():
                        continue
                value = text[start:end]
                if entity.validate is not None:
                    checked = entity.validate(value)
                    if checked is None:
                        continue
                    end = start + len(checked)
                    value = checked
                found.append(
                    Finding(
                        entity.name,
                        self.entity_action[entity.name],
                        start,
                        end,
                        self.replace(entity.name, value),
                    )
                )
        return drop_overlaps(found)

    def replace(self, entity: str, value: str) -> str:
        mode = self.config.redact_mode
        if mode == "replace_type":
            return f"[{entity.upper()}]"
        if mode == "hash":
            digest = hmac.new(self.hash_key, value.encode(), hashlib.sha256).hexdigest()[:12]
            return f"[{entity.upper()}:{digest}]"
        keep = 4 if entity in KEEP_LAST_FOUR else 0
        masked = re.sub(r"[A-Za-z0-9]", "*", value[: len(value) - keep] if keep else value)
        return masked + (value[-keep:] if keep else "")
