"""The deep health report shared by both listeners' `/health`.

`/health` answers without a key (probes, load balancers), so what it shows by default is
states and short categories (`unreachable`, `auth_failed`, `timeout` ...). A section puts
the text behind a category under `error_detail`; that text, scrubbed and with URLs cut to
what is safe, is shown only to a read_only or admin key.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ferro_proxy.jsonlog import scrub
from ferro_proxy.url_redact import rewrite_urls, strip_url_secrets, url_origin

if TYPE_CHECKING:
    from ferro_proxy.gateway import Gateway

# Other parts add sections: fn(gateway) -> (name, detail, healthy)
HEALTH_SECTIONS: list[Any] = []
DETAIL_KEY = "error_detail"  # text only key holders see; the public view drops it


def public_view(value: Any) -> Any:
    """The report as anyone may see it: no detail text, URLs cut to scheme://host[:port]."""
    if isinstance(value, dict):
        return {k: public_view(v) for k, v in value.items() if k != DETAIL_KEY}
    if isinstance(value, list):
        return [public_view(v) for v in value]
    if isinstance(value, str):
        return scrub(rewrite_urls(value, url_origin))
    return value


def detailed_view(value: Any) -> Any:
    """The report for a read_only/admin key: detail kept, scrubbed, URLs without userinfo,
    query or fragment."""
    if isinstance(value, dict):
        return {k: detailed_view(v) for k, v in value.items()}
    if isinstance(value, list):
        return [detailed_view(v) for v in value]
    if isinstance(value, str):
        return scrub(rewrite_urls(value, strip_url_secrets))
    return value


def health_report(gateway: Gateway, detailed: bool = False) -> dict[str, Any]:
    """The report; `detailed` only for a caller holding a read_only or admin key."""
    report = _raw_report(gateway)
    return detailed_view(report) if detailed else public_view(report)


def _raw_report(gateway: Gateway) -> dict[str, Any]:
    runtime = gateway.runtime
    providers: dict[str, Any] = {}
    if runtime is not None:
        for name, provider in runtime.providers.items():
            providers[name] = {"status": "configured", **provider.health()}
    report: dict[str, Any] = {
        "status": "ok",
        "draining": gateway.draining,
        "providers": providers,
    }
    degraded = False
    if runtime is not None:
        router_detail = runtime.chain.terminal.health()
        if router_detail:
            report["targets"] = router_detail  # each target's circuit state, latency, queue
            states = [t.get("state") for t in router_detail.values() if isinstance(t, dict)]
            if states and all(s == "open" for s in states):
                degraded = True
                report["message"] = "every target's circuit breaker is open"
        for f in runtime.chain.filters:
            detail = f.health()
            if detail:
                report.setdefault("filters", {})[f.label] = detail
    for section in HEALTH_SECTIONS:
        name, detail, healthy = section(gateway)
        report[name] = detail
        degraded = degraded or not healthy
    if not providers:
        report["status"] = "degraded"
        report["message"] = "no provider is configured: set e.g. OPENAI_API_KEY"
    elif degraded:
        report["status"] = "degraded"
    return report
