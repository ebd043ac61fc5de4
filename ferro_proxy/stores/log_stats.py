"""Request-log statistics for `GET /admin/logs/stats`, computed from the stored rows.

Totals are exact; latency percentiles and the time series come from the newest
`STATS_ROW_CAP` matching rows (the answer says `sampled: true` when that cap was hit).
"""

from __future__ import annotations

import math
import time
from typing import Any

from ferro_proxy.stores.base import LogQuery, LogStore
from ferro_proxy.stores.records import iso

STATS_ROW_CAP = 50_000


def percentile(sorted_values: list[float], pct: float) -> float | None:
    if not sorted_values:
        return None
    rank = max(0, math.ceil(pct / 100 * len(sorted_values)) - 1)
    return round(sorted_values[rank], 3)


def _group(rows: list[dict[str, Any]], column: str) -> list[dict[str, Any]]:
    groups: dict[str, dict[str, Any]] = {}
    for row in rows:
        name = row.get(column) or "unknown"
        g = groups.setdefault(name, {column: name, "requests": 0, "errors": 0, "tokens": 0, "cost_usd": 0.0})
        g["requests"] += 1
        g["errors"] += int(row["status"] or 0) >= 400
        g["tokens"] += int(row.get("total_tokens") or 0)
        g["cost_usd"] += float(row.get("cost_usd") or 0.0)
        g.setdefault("_lat", []).append(float(row.get("latency_ms") or 0.0))
    out = []
    for g in groups.values():
        lat = sorted(g.pop("_lat"))
        g["error_rate"] = round(g["errors"] / g["requests"], 4) if g["requests"] else 0.0
        g["cost_usd"] = round(g["cost_usd"], 8)
        g["latency_p50_ms"] = percentile(lat, 50)
        g["latency_p95_ms"] = percentile(lat, 95)
        out.append(g)
    out.sort(key=lambda g: g["requests"], reverse=True)
    return out


def _series(rows: list[dict[str, Any]], start: float, end: float, bucket: float) -> list[dict[str, Any]]:
    count = max(1, min(1000, math.ceil((end - start) / bucket)))
    buckets: list[dict[str, Any]] = [
        {"ts": start + i * bucket, "requests": 0, "errors": 0, "tokens": 0, "_lat": []} for i in range(count)
    ]
    for row in rows:
        index = int((row["ts"] - start) // bucket)
        if 0 <= index < count:
            b = buckets[index]
            b["requests"] += 1
            b["errors"] += int(row["status"] or 0) >= 400
            b["tokens"] += int(row.get("total_tokens") or 0)
            b["_lat"].append(float(row.get("latency_ms") or 0.0))
    for b in buckets:
        lat = sorted(b.pop("_lat"))
        b["t"] = iso(b["ts"])
        b["rps"] = round(b["requests"] / bucket, 4)
        b["latency_p50_ms"] = percentile(lat, 50)
        b["latency_p95_ms"] = percentile(lat, 95)
    return buckets


async def compute_stats(store: LogStore, q: LogQuery, bucket: float | None = None) -> dict[str, Any]:
    rows, total = await store.stats_rows(q, STATS_ROW_CAP)
    now = time.time()
    errors = sum(1 for r in rows if int(r["status"] or 0) >= 400)
    latencies = sorted(float(r.get("latency_ms") or 0.0) for r in rows)
    ttfts = sorted(float(r["ttft_ms"]) for r in rows if r.get("ttft_ms") is not None)
    end = q.until if q.until is not None else now
    start = q.since if q.since is not None else end - 3600
    bucket = bucket or max(1.0, (end - start) / 60)
    last_minute = sum(1 for r in rows if r["ts"] >= now - 60)
    return {
        "total_requests": total,
        "sampled": len(rows) < total,
        "errors": errors,
        "error_rate": round(errors / len(rows), 4) if rows else 0.0,
        "tokens": {
            "prompt": sum(int(r.get("prompt_tokens") or 0) for r in rows),
            "completion": sum(int(r.get("completion_tokens") or 0) for r in rows),
            "total": sum(int(r.get("total_tokens") or 0) for r in rows),
        },
        "cost_usd": round(sum(float(r.get("cost_usd") or 0.0) for r in rows), 8),
        "latency_ms": {
            "p50": percentile(latencies, 50),
            "p95": percentile(latencies, 95),
            "p99": percentile(latencies, 99),
            "avg": round(sum(latencies) / len(latencies), 3) if latencies else None,
        },
        "ttft_ms": {"p50": percentile(ttfts, 50), "p95": percentile(ttfts, 95)},
        "requests_per_second_last_minute": round(last_minute / 60, 4),
        "by_model": _group(rows, "model"),
        "by_provider": _group(rows, "provider"),
        "series": {
            "bucket_seconds": bucket,
            "since": iso(start),
            "until": iso(end),
            "points": _series(rows, start, end, bucket),
        },
    }
