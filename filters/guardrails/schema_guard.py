"""schema-guard: validates the request's JSON content or the model's JSON answer against a
JSON Schema (the `jsonschema` library; the schema's own `$schema` picks the draft, 2020-12
when absent). With `extract_json` the JSON may sit inside prose or a ``` code fence.

On input the last user message (or the prompt) is checked; on output every choice's text,
streamed answers once each choice finishes (the text still flows as it comes; a failure
ends the stream with an error event instead of [DONE])."""

from __future__ import annotations

import json
import re
from typing import Any, Literal

import orjson
from jsonschema.exceptions import SchemaError, best_match
from jsonschema.validators import validator_for

from ferro_proxy.chain import register_filter
from ferro_proxy.exchange import Exchange
from filters.guardrails.base import Guardrail, GuardrailConfig
from filters.guardrails.stream import Screen, WholeTextScreen
from filters.guardrails.text import Finding, Segment

_FENCE = re.compile(r"```[ \t]*(?:json|JSON)?[ \t]*\n(.*?)```", re.DOTALL)
_DECODER = json.JSONDecoder()
MAX_START_TRIES = 32  # opening brackets tried when digging JSON out of prose
_MISSING = object()


def extract_json(text: str, dig: bool) -> Any:
    """The JSON value in `text`, or `_MISSING`. With `dig`, also look in code fences and
    for the first parseable object or array inside prose."""
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        if not dig:
            return _MISSING
    for m in _FENCE.finditer(text):
        try:
            return orjson.loads(m.group(1))
        except orjson.JSONDecodeError:
            continue
    tries = 0
    for m in re.finditer(r"[\[{]", text):
        tries += 1
        if tries > MAX_START_TRIES:
            break
        try:
            value, _ = _DECODER.raw_decode(text, m.start())
        except ValueError:
            continue
        return value
    return _MISSING


def json_path(parts: Any) -> str:
    return "$" + "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in parts)


class SchemaGuardConfig(GuardrailConfig, kw_only=True):
    schema: dict[str, Any]
    apply_to: Literal["input", "output", "both"] = "output"
    extract_json: bool = True


@register_filter
class SchemaGuard(Guardrail):
    name = "schema-guard"
    description = "Validates request JSON content or the model's JSON answer against a JSON Schema."
    Config = SchemaGuardConfig

    def __init__(self, config: SchemaGuardConfig, gateway: Any, plugin: Any = None) -> None:
        super().__init__(config, gateway, plugin)
        cls = validator_for(config.schema)
        try:
            cls.check_schema(config.schema)
        except SchemaError as exc:
            raise ValueError(
                f"schema: not a valid JSON Schema: {exc.message} at {json_path(exc.path)}"
            ) from None
        self.validator = cls(config.schema, format_checker=cls.FORMAT_CHECKER)

    def check_text(self, text: str) -> list[Finding]:
        value = extract_json(text.strip(), self.config.extract_json)
        if value is _MISSING:
            return [Finding("invalid_json", self.config.action, note="no JSON found")]
        error = best_match(self.validator.iter_errors(value))
        if error is None:
            return []
        path = json_path(error.absolute_path)
        return [
            Finding(
                "schema_violation",
                self.config.action,
                note=f"at {path} ({error.validator})",
                detail={"json_path": path, "validator": error.validator},
            )
        ]

    def check_input(self, ex: Exchange, segments: list[Segment]) -> list[Finding]:
        users = [s for s in segments if s.role == "user"]
        return self.check_text(users[-1].text) if users else []

    def check_output(self, segments: list[Segment]) -> list[Finding]:
        found: list[Finding] = []
        for seg in segments:
            found.extend(self.check_text(seg.text))
        return found

    def output_screen(self) -> Screen:
        return WholeTextScreen(self.check_text)
