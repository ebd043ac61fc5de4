"""The docs stay true: links resolve, config snippets validate, every bundled filter and
provider (and every filter config field) is documented on its page.

Convention: a fenced block tagged exactly `yaml` or `json` is a gateway config and must
load; other YAML/JSON documents name what they are after the language (```yaml k8s,
```json log-line, ```json catalog) and are only checked to parse.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import msgspec
import pytest
import yaml

from ferro_proxy import chain
from ferro_proxy.config import config_from_data
from providers.registry import load_builtin_providers

ROOT = Path(__file__).resolve().parent.parent
DOCS = sorted([ROOT / "README.md", *(ROOT / "docs").glob("*.md")])
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")

FILTER_PAGES = {
    "word-filter": "guardrails.md",
    "max-token": "guardrails.md",
    "pii-redact": "guardrails.md",
    "secret-scan": "guardrails.md",
    "prompt-shield": "guardrails.md",
    "schema-guard": "guardrails.md",
    "regex-guard": "guardrails.md",
    "response-cache": "cache-limits-budgets.md",
    "rate-limit": "cache-limits-budgets.md",
    "budget": "cache-limits-budgets.md",
    "request-logger": "admin.md",
    "gateway-auth": "admin.md",
    "mcp": "mcp.md",
}


def fenced_blocks(text: str) -> list[tuple[int, str, str]]:
    """(line, info string, body) of every fenced block; a fence closes only at a line start."""
    blocks: list[tuple[int, str, str]] = []
    info: str | None = None
    start = 0
    body: list[str] = []
    for number, line in enumerate(text.splitlines(), 1):
        if info is None:
            if line.startswith("```"):
                info, start, body = line[3:].strip(), number, []
        elif line.startswith("```"):
            blocks.append((start, info, "\n".join(body)))
            info = None
        else:
            body.append(line)
    assert info is None, f"unclosed fence at line {start}"
    return blocks


def test_readme_is_a_front_door() -> None:
    text = (ROOT / "README.md").read_text()
    assert len(text.splitlines()) < 400
    for section in ("## Quick start", "## Your first request", "## Your first admin key", "## Feature map"):
        assert section in text
    assert "git clone" in text and "pip install -e '.[test]' && python -m pytest" in text


@pytest.mark.parametrize("page", DOCS, ids=lambda p: p.name)
def test_relative_links_resolve(page: Path) -> None:
    text = page.read_text()
    for block in fenced_blocks(text):
        text = text.replace(block[2], "")
    broken = []
    for target in LINK.findall(text):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target) or target.startswith("#"):
            continue
        path = target.split("#", 1)[0]
        if not (page.parent / path).exists():
            broken.append(target)
    assert broken == []


@pytest.mark.parametrize("page", DOCS, ids=lambda p: p.name)
def test_config_snippets_validate(page: Path) -> None:
    problems = []
    for line, info, body in fenced_blocks(page.read_text()):
        words = info.split()
        if not words or words[0] not in ("yaml", "json"):
            continue
        try:
            data = yaml.safe_load(body) if words[0] == "yaml" else json.loads(body)
        except (yaml.YAMLError, ValueError) as exc:
            problems.append(f"line {line}: does not parse: {exc}")
            continue
        if len(words) > 1:
            continue
        try:
            config_from_data(data, env={})
        except Exception as exc:  # noqa: BLE001 - every failure is reported with its line
            problems.append(f"line {line}: {exc}")
    assert problems == []


def test_every_filter_and_its_fields_are_documented() -> None:
    chain.load_builtin_filters()
    bundled = {name: cls for name, cls in chain.FILTERS.items() if cls.__module__.startswith("filters.")}
    assert set(bundled) == set(FILTER_PAGES), "a new filter needs a page in FILTER_PAGES"
    missing = []
    for name, cls in bundled.items():
        page = (ROOT / "docs" / FILTER_PAGES[name]).read_text()
        if f"`{name}`" not in page and f"name: {name}" not in page:
            missing.append(name)
        for field in msgspec.structs.fields(cls.Config):
            if not re.search(rf"\b{re.escape(field.name)}\b", page):
                missing.append(f"{name}.{field.name}")
    assert missing == []


def test_every_provider_is_documented() -> None:
    page = (ROOT / "docs" / "providers.md").read_text()
    missing = [name for name in load_builtin_providers() if f"`{name}`" not in page]
    assert missing == []
