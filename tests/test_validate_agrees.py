"""`ferro-proxy validate` and `serve` refuse the same configs with the same messages."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from ferro_proxy.config import ConfigError, load_config
from ferro_proxy.gateway import Gateway
from ferro_proxy.validate import validate_file

ENV = {"OPENAI_API_KEY": "sk-test-validate-agrees"}

# (filter, its config) pairs that a filter's own build-time checks refuse.
REJECTED = [
    ("word-filter", {"blocked_words": []}),
    ("word-filter", {"blocked_words": ["x"], "stream_window": 0}),
    ("max-token", {}),
    ("max-token", {"max_input_length": 0}),
    ("max-token", {"max_tokens": -1}),
    ("pii-redact", {"entities": ["shoe_size"]}),
    ("secret-scan", {"rules": ["no-such-rule"]}),
    ("secret-scan", {"patterns": [{"name": "x", "pattern": "("}]}),
    ("secret-scan", {"entropy_min_length": 4}),
    ("prompt-shield", {"threshold": 2}),
    ("prompt-shield", {"builtin_signals": False}),
    ("schema-guard", {"schema": {"type": 12}}),
    ("regex-guard", {"rules": []}),
    ("regex-guard", {"rules": [{"name": "a", "pattern": "a*"}]}),
    ("response-cache", {"max_age": 0}),
    ("response-cache", {"backend": "redis"}),
    ("rate-limit", {"key_limits": False}),
    ("rate-limit", {"limits": [{"requests_per_minute": 0}]}),
    ("budget", {"key_budgets": False}),
    ("budget", {"limit_usd": -1}),
    ("request-logger", {"persist": True, "backend": "sqlite"}),
    ("mcp", {"heartbeat_seconds": 0}),
]


def _serve_errors(path: Path) -> list[str]:
    async def build() -> list[str]:
        gateway = Gateway(env=ENV)
        try:
            await gateway.build_runtime(load_config(path, ENV))
        except ConfigError as exc:
            return exc.errors
        finally:
            await gateway.close()
        return []

    import asyncio

    return asyncio.run(build())


@pytest.mark.parametrize(("name", "config"), REJECTED, ids=[f"{n}-{i}" for i, (n, _) in enumerate(REJECTED)])
def test_validate_and_serve_refuse_alike(tmp_path: Path, name: str, config: dict) -> None:
    path = tmp_path / "gateway.yaml"
    path.write_text(yaml.safe_dump({"plugins": [{"name": name, "config": config}]}))
    by_validate = validate_file(str(path), ENV)
    assert by_validate, f"validate accepted {name} {config}"
    assert all(line.startswith("plugins[0]") for line in by_validate)
    assert by_validate == _serve_errors(path)


def test_serve_exits_2_with_the_message_validate_prints(tmp_path: Path) -> None:
    path = tmp_path / "gateway.yaml"
    path.write_text(yaml.safe_dump({"plugins": [{"name": "word-filter", "config": {"blocked_words": []}}]}))
    env = {"PATH": "/usr/bin:/bin", **ENV}
    check = subprocess.run(
        [sys.executable, "-m", "ferro_proxy", "validate", str(path)], capture_output=True, text=True, env=env, timeout=60
    )
    serve = subprocess.run(
        [sys.executable, "-m", "ferro_proxy", "serve", "--config", str(path), "--listen", "127.0.0.1:0",
         "--admin-listen", "127.0.0.1:0"],
        capture_output=True, text=True, env=env, timeout=60,
    )
    assert check.returncode == 1 and serve.returncode == 2
    message = "plugins[0].config: blocked_words: list at least one word"
    assert message in check.stdout and message in serve.stderr
