"""`ferro-proxy schema`: a JSON Schema of the config that editors can use."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import jsonschema
import yaml

ROOT = Path(__file__).resolve().parent.parent


def _schema() -> dict:
    out = subprocess.run(
        [sys.executable, "-m", "ferro_proxy", "schema"], capture_output=True, text=True, check=True, timeout=60
    )
    return json.loads(out.stdout)


def test_schema_accepts_the_example_config_and_refuses_mistakes() -> None:
    schema = _schema()
    validator = jsonschema.Draft202012Validator(schema)
    example = yaml.safe_load((ROOT / "config.example.yaml").read_text())
    assert list(validator.iter_errors(example)) == []
    assert list(validator.iter_errors({"request_timeout": "30s", "strategy": {"mode": "fallback"}})) == []
    assert list(validator.iter_errors({"targets": [{"virtual_key": "openai", "wieght": 2}]}))
    assert list(validator.iter_errors({"request_timeout": "soon"}))
    assert list(validator.iter_errors({"unknown_top_level": 1}))
