"""Config loading: env expansion, every error at once with its path, the CLI refusing to start."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from ferro_proxy.config import ConfigError, config_from_data, expand_env, load_config
from ferro_proxy.validate import validate_file

ROOT = Path(__file__).resolve().parent.parent


def test_env_expansion_with_defaults():
    env = {"KEY": "secret", "EMPTY": ""}
    assert expand_env("${KEY}", env) == "secret"
    assert expand_env("${MISSING:-fallback}", env) == "fallback"
    assert expand_env("${EMPTY:-fallback}", env) == "fallback"
    assert expand_env({"a": ["x-${KEY}-y"]}, env) == {"a": ["x-secret-y"]}


def test_all_errors_reported_with_paths():
    data = {
        "targets": [{"virtual_key": "openai"}, {"virtual_key": "anthropic", "retry": {"attempts": "three"}}],
        "strategy": {"mode": "round-robin"},
        "surprise": True,
        "plugins": [{"type": "guardrail"}],
    }
    with pytest.raises(ConfigError) as info:
        config_from_data(data)
    errors = info.value.errors
    assert "targets[1].retry.attempts: expected int, got str" in errors
    assert any(e.startswith("strategy.mode: expected one of") for e in errors)
    assert any(e.startswith("surprise: unknown field") for e in errors)
    assert "plugins[0].name: required field missing" in errors
    assert len(errors) == 4


def test_durations_accept_units():
    cfg = config_from_data(
        {"request_timeout": "2m", "targets": [{"virtual_key": "openai", "timeout": "500ms"}]}
    )
    assert cfg.request_timeout == 120.0 and cfg.targets[0].timeout == 0.5


@pytest.mark.parametrize("name", ["config.example.yaml", "config.example.json"])
def test_shipped_examples_are_valid(name, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-x")
    assert validate_file(str(ROOT / name)) == []


def test_yaml_and_json_examples_say_the_same():
    from_yaml = yaml.safe_load((ROOT / "config.example.yaml").read_text())
    from_json = json.loads((ROOT / "config.example.json").read_text())
    assert from_yaml == from_json


def test_load_config_reads_json_by_extension(tmp_path):
    path = tmp_path / "gw.json"
    path.write_text(json.dumps({"aliases": {"fast": "gpt-4o-mini"}}))
    assert load_config(path).aliases == {"fast": "gpt-4o-mini"}


def test_serve_exits_nonzero_before_listening_on_bad_config(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("targets:\n  - virtual_key: openai\n    retry: {attempts: x}\n  - weight: 2\n")
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "ferro_proxy",
            "serve",
            "--config",
            str(path),
            "--listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode == 2
    assert "targets[0].retry.attempts: expected int, got str" in proc.stderr
    assert "targets[1].virtual_key: required field missing" in proc.stderr


def test_validate_command_lists_every_error(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("targets:\n  - virtual_key: nosuch\nplugins:\n  - name: not-a-plugin\n")
    proc = subprocess.run(
        [sys.executable, "-m", "ferro_proxy", "validate", str(path)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode == 1
    assert "targets[0].virtual_key: unknown provider 'nosuch'" in proc.stdout
    assert "plugins[0].name: unknown plugin 'not-a-plugin'" in proc.stdout
