"""Rules for the conditional and content-based strategies: the first matching rule names
the target. Regexes are compiled once, when the config is loaded.

Keys: `model` (exact, the requested name or the resolved one), `model_prefix`, `header`
and `metadata` (the field named by `name`; metadata is the gateway's per-request metadata,
then the body's `metadata` object), and over the text of the user messages
`prompt_contains`, `prompt_not_contains` (case-insensitive) and `prompt_regex`.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ferro_proxy.config import ConditionConfig
from ferro_proxy.exchange import Exchange


class RequestView:
    """What rules look at, computed lazily and at most once per request."""

    __slots__ = ("ex", "requested_model", "model", "_prompt", "_prompt_lower")

    def __init__(self, ex: Exchange, requested_model: str, model: str) -> None:
        self.ex = ex
        self.requested_model = requested_model
        self.model = model
        self._prompt: str | None = None
        self._prompt_lower: str | None = None

    @property
    def prompt(self) -> str:
        """The text of the user messages (or the `prompt` / `input` of other endpoints)."""
        if self._prompt is None:
            self._prompt = user_text(self.ex.body)
        return self._prompt

    @property
    def prompt_lower(self) -> str:
        if self._prompt_lower is None:
            self._prompt_lower = self.prompt.lower()
        return self._prompt_lower

    def metadata(self, name: str) -> Any:
        if name in self.ex.metadata:
            return self.ex.metadata[name]
        body_meta = self.ex.body.get("metadata") if self.ex.body else None
        return body_meta.get(name) if isinstance(body_meta, dict) else None


def _text_of(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for part in content:
            if isinstance(part, dict) and isinstance(part.get("text"), str):
                parts.append(part["text"])
            elif isinstance(part, str):
                parts.append(part)
        return "\n".join(parts)
    return ""


def user_text(body: dict[str, Any] | None) -> str:
    if not body:
        return ""
    messages = body.get("messages")
    if isinstance(messages, list):
        return "\n".join(
            _text_of(m.get("content")) for m in messages if isinstance(m, dict) and m.get("role") == "user"
        )
    for field in ("prompt", "input"):
        value = body.get(field)
        if isinstance(value, str):
            return value
        if isinstance(value, list):
            return "\n".join(v for v in value if isinstance(v, str))
    return ""


@dataclass(frozen=True, slots=True)
class Rule:
    target_key: str
    test: Callable[[RequestView], bool]
    describe: str


def compile_rule(c: ConditionConfig) -> Rule:
    value = c.value
    name = c.name or ""
    test: Callable[[RequestView], bool]
    if c.key == "model":

        def test(v: RequestView) -> bool:
            return value in (v.requested_model, v.model)

    elif c.key == "model_prefix":

        def test(v: RequestView) -> bool:
            return v.model.startswith(value) or v.requested_model.startswith(value)

    elif c.key == "header":

        def test(v: RequestView) -> bool:
            headers = v.ex.headers
            return headers is not None and headers.get(name) == value

    elif c.key == "metadata":

        def test(v: RequestView) -> bool:
            found = v.metadata(name)
            return found is not None and str(found) == value

    elif c.key == "prompt_contains":
        needle = value.lower()

        def test(v: RequestView) -> bool:
            return needle in v.prompt_lower

    elif c.key == "prompt_not_contains":
        needle = value.lower()

        def test(v: RequestView) -> bool:
            return needle not in v.prompt_lower

    else:  # prompt_regex (validated when the config was loaded)
        pattern = re.compile(value)

        def test(v: RequestView) -> bool:
            return pattern.search(v.prompt) is not None

    return Rule(c.target_key, test, f"{c.key}={value!r}")


def first_match(rules: list[Rule], view: RequestView) -> Rule | None:
    for rule in rules:
        if rule.test(view):
            return rule
    return None
