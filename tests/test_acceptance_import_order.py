"""Acceptance: every built-in provider is available whatever was imported first.

`load_builtin_providers` imports the adapters only while the registry is empty, so a filter
module that imported an adapter at import time (registering just that one) used to hide every
other provider: `import filters` first, then a gateway with OpenAI and Anthropic keys served
`gpt-4o-mini` from Anthropic. Checked in a fresh interpreter, where import order is real.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROBE = """
import filters  # every filter module, as the gateway imports them at start
from providers.registry import load_builtin_providers
names = set(load_builtin_providers())
missing = {"openai", "anthropic", "gemini", "bedrock", "cohere", "groq"} - names
assert not missing, f"providers hidden by import order: {sorted(missing)}"
"""


def test_importing_filters_first_hides_no_provider() -> None:
    done = subprocess.run([sys.executable, "-c", PROBE], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr[-2000:]
