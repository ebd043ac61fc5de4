"""Which hosts are intercepted, which provider owns each, and how their paths map onto the
gateway's own routes.

Default: the public API hosts every built-in provider declares (`ProviderSpec.hosts`), plus
the regional host patterns of Bedrock and Vertex AI. `intercept.hosts` replaces the list,
`intercept.extra_hosts` adds to it; entries may use shell wildcards (`*.example.com`).
"""

from __future__ import annotations

from dataclasses import dataclass
from fnmatch import fnmatchcase
from urllib.parse import urlsplit

from ferro_proxy.config import InterceptConfig
from providers.registry import load_builtin_providers

# Hosts whose names carry a region, so no fixed list can name them all.
REGIONAL_PATTERNS: dict[str, str] = {
    "bedrock-runtime.*.amazonaws.com": "bedrock",
    "*-aiplatform.googleapis.com": "vertex-ai",
}


@dataclass(frozen=True, slots=True)
class HostTarget:
    """An intercepted host: the provider that owns it (None: routed like any request) and
    the path prefix of its API (e.g. `/openai/v1` on api.groq.com)."""

    host: str
    provider: str | None
    api_prefix: str

    def gateway_path(self, path: str) -> str:
        """The gateway route for a path on this host: the host's API prefix becomes `/v1`."""
        prefix = self.api_prefix
        if prefix and (path == prefix or path.startswith(prefix + "/")):
            return "/v1" + path[len(prefix) :]
        if not prefix and not path.startswith("/v1/"):
            return "/v1" + path
        return path


def _api_prefix(base_url: str, version_segment: str) -> str:
    path = urlsplit(base_url).path.rstrip("/") if base_url else ""
    return path or version_segment.rstrip("/")


def builtin_hosts() -> dict[str, HostTarget]:
    """Every host a built-in provider declares, with its owner and API prefix."""
    table: dict[str, HostTarget] = {}
    for name, spec in sorted(load_builtin_providers().items()):
        prefix = _api_prefix(spec.default_base_url, spec.version_segment)
        for host in spec.hosts:
            table.setdefault(host, HostTarget(host, name, prefix))
    return table


class HostTable:
    """Lookup of intercepted hosts for one `intercept:` config."""

    def __init__(self, config: InterceptConfig) -> None:
        known = builtin_hosts()
        owners = dict(REGIONAL_PATTERNS)
        names = list(config.hosts) if config.hosts is not None else [*known, *REGIONAL_PATTERNS]
        names += config.extra_hosts
        self.exact: dict[str, HostTarget] = {}
        self.patterns: list[tuple[str, HostTarget]] = []
        for raw in names:
            name = raw.strip().lower().rstrip(".")
            if not name:
                continue
            if any(c in name for c in "*?["):
                provider = owners.get(name)
                prefix = _prefix_of(provider, known)
                self.patterns.append((name, HostTarget(name, provider, prefix)))
            else:
                owned = known.get(name)
                if owned is None:
                    provider, prefix = _by_pattern(name, known) or (None, "")
                    owned = HostTarget(name, provider, prefix)
                self.exact[name] = owned

    def match(self, host: str) -> HostTarget | None:
        host = host.lower().rstrip(".")
        target = self.exact.get(host)
        if target is not None:
            return target
        for pattern, generic in self.patterns:
            if fnmatchcase(host, pattern):
                return HostTarget(host, generic.provider, generic.api_prefix)
        return None

    @property
    def names(self) -> list[str]:
        return [*self.exact, *(p for p, _ in self.patterns)]


def _prefix_of(provider: str | None, known: dict[str, HostTarget]) -> str:
    for target in known.values():
        if target.provider == provider:
            return target.api_prefix
    return ""


def _by_pattern(host: str, known: dict[str, HostTarget]) -> tuple[str | None, str] | None:
    """(provider, prefix) for a host named explicitly that a regional pattern covers."""
    for pattern, provider in REGIONAL_PATTERNS.items():
        if fnmatchcase(host, pattern):
            return provider, _prefix_of(provider, known)
    return None
