"""The deep health report shared by both listeners' `/health`."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ferro_proxy.gateway import Gateway

# Other parts add sections: fn(gateway) -> (name, detail, healthy)
HEALTH_SECTIONS: list[Any] = []


def health_report(gateway: Gateway) -> dict[str, Any]:
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
