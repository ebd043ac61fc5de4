"""Every registered provider has its own wire-format test module (one that declares the
provider in PROVIDERS_COVERED), and every provider the model catalog prices is registered."""

from __future__ import annotations

import ast
import json
from pathlib import Path

from providers.registry import load_builtin_providers

TESTS = Path(__file__).resolve().parent


def _covered() -> dict[str, str]:
    covered: dict[str, str] = {}
    for path in TESTS.glob("test_provider_*.py"):
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, ast.Assign) and any(
                isinstance(t, ast.Name) and t.id == "PROVIDERS_COVERED" for t in node.targets
            ):
                for name in ast.literal_eval(node.value):
                    covered[name] = path.name
    return covered


def test_every_registered_provider_has_a_test():
    registered = set(load_builtin_providers())
    covered = _covered()
    missing = sorted(registered - set(covered))
    assert not missing, (
        f"providers without a test_provider_*.py declaring them in PROVIDERS_COVERED: {missing}"
    )
    stale = sorted(set(covered) - registered)
    assert not stale, f"tests claim providers that are not registered: {stale}"


def test_catalog_names_only_registered_providers():
    registered = set(load_builtin_providers())
    catalog = json.loads((TESTS.parent / "providers" / "data" / "catalog.json").read_text())["models"]
    providers = {key.partition("/")[0] for key in catalog if "/" in key}
    assert providers <= registered, sorted(providers - registered)
    assert registered - {"ollama"} <= providers, (
        f"providers with no catalog entry: {sorted(registered - providers)}"
    )
