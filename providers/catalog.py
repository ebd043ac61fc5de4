"""The model catalog: per `provider/model`, its mode, limits, prices and capabilities.

Bundled as `providers/data/catalog.json` (no network at run time); `model_catalog:` in the
config (or `FERRO_MODEL_CATALOG`) names a file or URL whose entries override the bundled ones.
Prices are USD per million tokens. A model without a price is *unpriced*: its cost is
unknown (None), never $0.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any


@dataclass(frozen=True, slots=True)
class ModelInfo:
    provider: str
    model: str
    mode: str = "chat"  # chat | embedding | image | completion
    context_window: int | None = None
    max_output_tokens: int | None = None
    input_per_million: float | None = None
    output_per_million: float | None = None
    cached_input_per_million: float | None = None
    capabilities: tuple[str, ...] = field(default_factory=tuple)

    @property
    def priced(self) -> bool:
        return self.input_per_million is not None

    def cost(self, prompt_tokens: int, completion_tokens: int, cached_tokens: int = 0) -> float | None:
        if self.input_per_million is None:
            return None
        uncached = max(0, prompt_tokens - cached_tokens)
        cached_price = (
            self.cached_input_per_million
            if self.cached_input_per_million is not None
            else self.input_per_million
        )
        total = uncached * self.input_per_million + cached_tokens * cached_price
        total += completion_tokens * (self.output_per_million or 0.0)
        return total / 1_000_000

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"mode": self.mode}
        for key in (
            "context_window",
            "max_output_tokens",
            "input_per_million",
            "output_per_million",
            "cached_input_per_million",
        ):
            value = getattr(self, key)
            if value is not None:
                out[key] = value
        if self.capabilities:
            out["capabilities"] = list(self.capabilities)
        return out


def _entry(key: str, data: dict[str, Any]) -> ModelInfo:
    provider, _, model = key.partition("/")
    return ModelInfo(
        provider=provider,
        model=model,
        mode=data.get("mode", "chat"),
        context_window=data.get("context_window"),
        max_output_tokens=data.get("max_output_tokens"),
        input_per_million=data.get("input_per_million"),
        output_per_million=data.get("output_per_million"),
        cached_input_per_million=data.get("cached_input_per_million"),
        capabilities=tuple(data.get("capabilities", ())),
    )


class Catalog:
    def __init__(self, entries: dict[str, dict[str, Any]]) -> None:
        self._models: dict[tuple[str, str], ModelInfo] = {}
        self._by_provider: dict[str, list[str]] = {}
        self._providers_of: dict[str, list[str]] = {}
        for key, data in entries.items():
            if "/" not in key or key.startswith("_"):
                continue
            info = _entry(key, data)
            self._models[(info.provider, info.model)] = info
            self._by_provider.setdefault(info.provider, []).append(info.model)
            self._providers_of.setdefault(info.model, []).append(info.provider)

    def get(self, provider: str, model: str) -> ModelInfo | None:
        return self._models.get((provider, model))

    def models_for(self, provider: str) -> list[str]:
        return self._by_provider.get(provider, [])

    def providers_of(self, model: str) -> list[str]:
        return self._providers_of.get(model, [])

    def __len__(self) -> int:
        return len(self._models)

    def __iter__(self):
        return iter(self._models.values())


@lru_cache(maxsize=1)
def _bundled() -> dict[str, dict[str, Any]]:
    text = resources.files("providers").joinpath("data/catalog.json").read_text()
    return json.loads(text)["models"]


def read_override(source: str) -> dict[str, dict[str, Any]]:
    """Entries from a catalog file or URL (same shape as the bundled one)."""
    if source.startswith(("http://", "https://")):
        import urllib.request

        with urllib.request.urlopen(source, timeout=10) as resp:  # noqa: S310 (operator-chosen URL)
            data = json.loads(resp.read())
    else:
        data = json.loads(Path(source).read_text())
    models = data.get("models", data)
    if not isinstance(models, dict):
        raise ValueError(f"model catalog {source}: expected an object of 'provider/model' entries")
    return models


def load_catalog(override: str | None = None) -> Catalog:
    entries = dict(_bundled())
    if override:
        entries.update(read_override(override))
    return Catalog(entries)
