"""`/admin/logs` (list, delete), `/admin/logs/stats` and `/admin/audit`."""

from __future__ import annotations

from aiohttp import web

from ferro_proxy.admin.http import GATEWAY, MAX_TIME, audit, int_param, json_response, parse_time
from ferro_proxy.errors import GatewayError, bad_request
from ferro_proxy.stores.base import LogQuery, LogStore
from ferro_proxy.stores.log_stats import compute_stats
from ferro_proxy.stores.records import public_log


def log_store(request: web.Request) -> LogStore:
    store = request.app[GATEWAY].services.get("logs")
    if store is None:
        raise GatewayError(501, "request log storage is not enabled", code="not_implemented")
    return store


def log_query(request: web.Request, default_limit: int = 50) -> LogQuery:
    q = request.query
    query = LogQuery(
        model=q.get("model") or None,
        provider=q.get("provider") or None,
        key_id=q.get("key") or q.get("key_id") or None,
        status=q.get("status") or None,
        since=parse_time(q.get("since"), "since"),
        until=parse_time(q.get("until") or q.get("before"), "until"),
        limit=int_param(request, "limit", default_limit, low=1, high=1000),
        offset=int_param(request, "offset", 0),
    )
    try:
        query.status_range()
    except ValueError as exc:
        raise bad_request(str(exc), param="status") from None
    return query


def _filters(query: LogQuery) -> dict[str, object]:
    return {
        "model": query.model,
        "provider": query.provider,
        "key": query.key_id,
        "status": query.status,
        "since": query.since,
        "until": query.until,
    }


async def list_logs(request: web.Request) -> web.Response:
    query = log_query(request)
    rows, total = await log_store(request).query(query)
    return json_response(
        {
            "object": "list",
            "data": [public_log(r) for r in rows],
            "summary": {"total_entries": total, "returned_entries": len(rows)},
            "filters": {**_filters(query), "limit": query.limit, "offset": query.offset},
        }
    )


async def delete_logs(request: web.Request) -> web.Response:
    query = log_query(request)
    if query.until is None and request.query.get("all", "").lower() != "true":
        raise bad_request("give until=<time> (or before=), or all=true to delete every log", param="until")
    deleted = await log_store(request).delete(query)
    await audit(request, "logs.delete", "logs", {"deleted": deleted, **_filters(query)})
    return json_response({"deleted": deleted, "filters": _filters(query)})


async def logs_stats(request: web.Request) -> web.Response:
    query = log_query(request)
    bucket = request.query.get("bucket")
    seconds = None
    if bucket:
        try:
            seconds = float(bucket)
        except ValueError:
            raise bad_request("invalid bucket: seconds per point", param="bucket") from None
        if not 0 < seconds <= MAX_TIME:  # also refuses nan and inf
            raise bad_request("invalid bucket: must be > 0 seconds, up to the time range", param="bucket")
    stats = await compute_stats(log_store(request), query, seconds)
    return json_response({**stats, "filters": _filters(query)})


async def list_audit(request: web.Request) -> web.Response:
    store = request.app[GATEWAY].services.get("audit")
    if store is None:
        raise GatewayError(501, "the audit log is not enabled", code="not_implemented")
    limit = int_param(request, "limit", 50, low=1, high=500)
    offset = int_param(request, "offset", 0)
    entries, total = await store.list(limit, offset, request.query.get("action") or None)
    return json_response({"object": "list", "total": total, "data": [e.public() for e in entries]})
