"""Prometheus metrics (prefix `ferro_`), in-memory and cheap to update on the hot path.

Each Gateway owns its own registry so tests and reloads never fight over globals. Other
parts of the gateway add their metrics with `metrics.counter(...)` etc., which returns the
existing collector when the name is already registered.
"""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)


class Metrics:
    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self._collectors: dict[str, Any] = {}
        self._children: dict[tuple[Any, tuple[str, ...]], Any] = {}
        self.requests = self.counter(
            "ferro_requests_total",
            "Requests answered by the proxy",
            ["endpoint", "provider", "model", "status"],
        )
        self.request_duration = self.histogram(
            "ferro_request_duration_seconds", "Time from request to last byte", ["endpoint", "provider"]
        )
        self.upstream_duration = self.histogram(
            "ferro_upstream_duration_seconds", "Time spent waiting on upstreams", ["provider"]
        )
        self.ttft = self.histogram(
            "ferro_time_to_first_token_seconds", "Time to the first streamed token", ["provider", "model"]
        )
        self.tokens = self.counter(
            "ferro_tokens_total", "Tokens counted from upstream usage", ["provider", "model", "direction"]
        )
        self.in_flight = self.gauge("ferro_requests_in_flight", "Requests being served now")
        self.cost = self.counter("ferro_cost_usd_total", "Estimated spend in USD", ["provider", "model"])
        self.unpriced = self.counter(
            "ferro_unpriced_requests_total",
            "Requests whose model has no price in the catalog",
            ["provider", "model"],
        )
        self.config_reloads = self.counter("ferro_config_reloads_total", "Config reloads", ["result"])

    def _get(
        self, cls: type, name: str, doc: str, labels: list[str] | tuple[str, ...] = (), **kw: Any
    ) -> Any:
        existing = self._collectors.get(name)
        if existing is not None:
            return existing
        collector = cls(name, doc, list(labels), registry=self.registry, **kw)
        self._collectors[name] = collector
        return collector

    def counter(self, name: str, doc: str, labels: list[str] | tuple[str, ...] = ()) -> Counter:
        return self._get(Counter, name, doc, labels)

    def gauge(self, name: str, doc: str, labels: list[str] | tuple[str, ...] = ()) -> Gauge:
        return self._get(Gauge, name, doc, labels)

    def histogram(
        self,
        name: str,
        doc: str,
        labels: list[str] | tuple[str, ...] = (),
        buckets: tuple[float, ...] = LATENCY_BUCKETS,
    ) -> Histogram:
        return self._get(Histogram, name, doc, labels, buckets=buckets)

    def child(self, metric: Any, *values: str) -> Any:
        """`metric.labels(*values)`, remembered: the hot path skips prometheus_client's
        label validation and locking once a label set has been seen. (The registry keeps
        every child anyway, so this adds no cardinality of its own.)"""
        key = (metric, values)
        found = self._children.get(key)
        if found is None:
            found = self._children[key] = metric.labels(*values)
        return found

    def render(self) -> bytes:
        return generate_latest(self.registry)
