"""The config's JSON Schema, generated from the msgspec types, for editors' autocompletion
(`ferro-proxy schema > gateway.schema.json`, then point the YAML language server at it)."""

from __future__ import annotations

from typing import Any

import msgspec

from ferro_proxy.config import DURATION, GatewayConfig

_DURATION_STRING = {"type": "string", "pattern": r"^\s*\d+(\.\d+)?\s*(ms|s|m|h)?\s*$"}


def _allow_duration_strings(node: Any) -> Any:
    """msgspec describes a Duration as a number; the file may also say "500ms", "30s", "2m"."""
    if isinstance(node, dict):
        node = {k: _allow_duration_strings(v) for k, v in node.items()}
        if node.get("description") == DURATION.description and node.get("type") == "number":
            number = {k: v for k, v in node.items() if k not in ("description", "default")}
            kept = {k: node[k] for k in ("description", "default") if k in node}
            return {**kept, "anyOf": [number, _DURATION_STRING]}
        return node
    if isinstance(node, list):
        return [_allow_duration_strings(v) for v in node]
    return node


def config_schema() -> dict[str, Any]:
    schema = _allow_duration_strings(msgspec.json.schema(GatewayConfig))
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "ferro-proxy gateway config",
        **schema,
    }


def config_schema_text() -> str:
    return msgspec.json.format(msgspec.json.encode(config_schema()), indent=2).decode() + "\n"
