"""`request-logger` (type `logging`): one structured line per request, and with
`persist: true` one row per request in the request-log store.

Rows go through a bounded queue to a background writer that inserts them in batches, so a
slow or dead database never slows or fails a request: when the queue is full the row is
dropped and counted in `ferro_log_rows_dropped_total{reason}`; a failed batch is dropped
and counted too. On shutdown (or when a reload replaces the filter) the queue is flushed.
The store is the gateway's (`REQUEST_LOG_STORE_BACKEND/_DSN`) unless the filter names its
own `backend`/`dsn`. Bodies are kept only with `log_bodies: true`, after secret scrubbing.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from typing import Any, Literal

import orjson

from ferro_proxy.chain import Filter, Next, register_filter
from ferro_proxy.config import Base, Duration
from ferro_proxy.errors import GatewayError
from ferro_proxy.exchange import Exchange, Reply, StreamChunk
from ferro_proxy.jsonlog import log_fields
from ferro_proxy.redaction import redact_obj, redact_text

log = logging.getLogger("ferro_proxy.request_log")
# The line has its own timestamp; bodies stay in the store.
_NOT_IN_LINE = frozenset({"ts", "finished_at", "request_body", "response_body"})
# Textual row fields besides `error` and the bodies (which are masked as they are built).
_TEXT_FIELDS = ("key_id", "endpoint", "provider", "model", "guardrail_hits")
_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}


class RequestLoggerConfig(Base):
    level: Literal["debug", "info", "warning", "error"] = "info"
    persist: bool = False
    backend: Literal["memory", "sqlite", "postgres"] | None = None
    dsn: str | None = None
    log_bodies: bool = False
    max_body_chars: int = 8192
    queue_size: int = 10_000
    batch_size: int = 200
    flush_interval: Duration = 1.0


def _body_text(data: Any, limit: int) -> str:
    text = data if isinstance(data, str) else orjson.dumps(data, default=str).decode()
    # Cut with a margin first (masking a whole large body is wasted work), mask, then cut:
    # a secret cut in half at the limit would no longer be recognised.
    text = redact_text(text[: limit + 512])
    return text if len(text) <= limit else text[:limit] + "…[truncated]"


class BatchWriter:
    """A bounded queue drained by one background task into `store.insert_many`."""

    def __init__(self, store: Any, metrics: Any, queue_size: int, batch_size: int, interval: float) -> None:
        self.store = store
        self.queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue(maxsize=max(1, queue_size))
        self.batch_size = max(1, batch_size)
        self.interval = interval
        self.dropped = metrics.counter(
            "ferro_log_rows_dropped_total",
            "Request-log rows not stored (queue full or write failed)",
            ["reason"],
        )
        self.written = metrics.counter("ferro_log_rows_written_total", "Request-log rows stored")
        self._task: asyncio.Task[None] | None = None
        self._pending: list[dict[str, Any]] = []
        self._last_error_log = 0.0

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="ferro-request-log-writer")

    def put(self, row: dict[str, Any]) -> None:
        try:
            self.queue.put_nowait(row)
        except asyncio.QueueFull:
            self.dropped.labels("queue_full").inc()

    def _take_batch(self, most: int) -> list[dict[str, Any]]:
        batch: list[dict[str, Any]] = []
        while len(batch) < most:
            try:
                batch.append(self.queue.get_nowait())
            except asyncio.QueueEmpty:
                break
        return batch

    async def _write(self, batch: list[dict[str, Any]]) -> None:
        try:
            await self.store.insert_many(batch)
            self.written.inc(len(batch))
        except Exception as exc:
            self.dropped.labels("write_error").inc(len(batch))
            now = time.monotonic()
            if now - self._last_error_log > 30:
                self._last_error_log = now
                log.warning("request-log write failed, %d rows dropped: %s", len(batch), type(exc).__name__)

    async def _run(self) -> None:
        while True:
            self._pending.append(await self.queue.get())
            if self.interval > 0 and self.queue.qsize() + 1 < self.batch_size:
                await asyncio.sleep(self.interval)  # let a batch gather
            self._pending.extend(self._take_batch(self.batch_size - len(self._pending)))
            await self._write(self._pending)
            self._pending = []  # only now: a batch cut short by shutdown is written by close()

    async def close(self, timeout: float = 5.0) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except (asyncio.CancelledError, Exception):
                pass
            self._task = None
        if self._pending:
            await self._write(self._pending)
            self._pending = []
        deadline = time.monotonic() + timeout
        while not self.queue.empty() and time.monotonic() < deadline:
            await self._write(self._take_batch(self.batch_size))
        left = self.queue.qsize()
        if left:
            self.dropped.labels("shutdown").inc(left)


@register_filter
class RequestLogger(Filter):
    name = "request-logger"
    type = "logging"
    description = "A structured log line per request; with persist: true, a row in the request-log store."
    Config = RequestLoggerConfig

    def __init__(self, config: RequestLoggerConfig, gateway: Any, plugin: Any = None) -> None:
        super().__init__(config, gateway, plugin)
        if (config.backend in ("sqlite", "postgres")) and not config.dsn:
            raise ValueError(f"dsn: required with backend {config.backend!r}")
        self.level = _LEVELS[config.level]
        self.writer: BatchWriter | None = None

    async def start(self) -> None:
        if not self.config.persist:
            return
        hub = self.gateway.services.get("stores")
        store = self.gateway.services.get("logs")
        if self.config.backend and hub is not None:
            store = await hub.log_store(self.config.backend, self.config.dsn or "")
            if hub.choices.get("logs", ("memory", ""))[0] == "memory":
                # The env chose no log store: the admin API reads this filter's.
                hub.logs = store
                self.gateway.services["logs"] = store
        if store is None:
            log.warning("request-logger: persist is on but the gateway has no request-log store")
            return
        c = self.config
        self.writer = BatchWriter(store, self.gateway.metrics, c.queue_size, c.batch_size, c.flush_interval)
        self.writer.start()

    async def close(self) -> None:
        if self.writer is not None:
            await self.writer.close()
            self.writer = None

    async def handle(self, ex: Exchange, next: Next) -> Reply:
        # The whole exchange is logged whatever `stage` says: one line when it is over.
        try:
            reply = await next(ex)
        except GatewayError as err:
            self.record(ex, None, err)
            raise
        collected: list[str] | None = None
        if self.config.log_bodies and reply.stream is not None:
            collected = []
            reply.wrap_stream(lambda stream: _collect_text(stream, collected))
        reply.on_complete(lambda e, r, err: self.record(e, r, err, collected))
        return reply

    def record(
        self, ex: Exchange, reply: Reply | None, error: GatewayError | None, streamed: list[str] | None = None
    ) -> None:
        try:
            row = self.build_row(ex, reply, error, streamed)
        except Exception:  # fail open: never let logging break the answer
            log.warning("request-logger could not build a row", exc_info=True)
            return
        if log.isEnabledFor(self.level):
            fields = {k: v for k, v in row.items() if v is not None and k not in _NOT_IN_LINE}
            fields["request_id"] = fields.pop("id")
            log_fields(log, self.level, "request", **fields)
        if self.writer is not None:
            self.writer.put(row)

    def build_row(
        self, ex: Exchange, reply: Reply | None, error: GatewayError | None, streamed: list[str] | None
    ) -> dict[str, Any]:
        elapsed = ex.elapsed()
        now = time.time()
        usage = ex.usage
        key = ex.gateway_key
        hits = ex.metadata.get("guardrail_hits")
        status = error.status if error is not None else (reply.status if reply is not None else 0)
        row: dict[str, Any] = {
            "id": ex.request_id,
            "ts": now - elapsed,
            "finished_at": now,
            "key_id": getattr(key, "id", None),
            "endpoint": ex.endpoint,
            "provider": ex.provider or (ex.attempts[-1].provider if ex.attempts else None),
            "model": ex.resolved_model or ex.model or None,
            "status": status,
            "stream": ex.stream,
            "prompt_tokens": usage.prompt_tokens,
            "completion_tokens": usage.completion_tokens,
            "total_tokens": usage.total_tokens,
            "cost_usd": ex.cost_usd,
            "latency_ms": round(elapsed * 1000, 3),
            "ttft_ms": round(ex.ttft_seconds * 1000, 3) if ex.ttft_seconds is not None else None,
            # masked before it is cut: a key cut in half would no longer be found
            "error": redact_text(f"{error.code or error.type}: {error.message}")[:500]
            if error is not None
            else None,
            "cache_hit": _cache_hit(ex, reply),
            "guardrail_hits": list(hits) if isinstance(hits, list | tuple | set) else hits,
            "request_body": None,
            "response_body": None,
        }
        if self.config.log_bodies:
            limit = self.config.max_body_chars
            if ex.body is not None:
                row["request_body"] = _body_text(ex.body, limit)
            if streamed is not None:
                row["response_body"] = _body_text("".join(streamed), limit)
            elif reply is not None and reply.stream is None:
                try:
                    row["response_body"] = _body_text(reply.peek_json(), limit)
                except orjson.JSONDecodeError:
                    row["response_body"] = None
        for name in _TEXT_FIELDS:  # the rest of what a read_only key reads through /admin/logs
            if row[name] is not None:
                row[name] = redact_obj(row[name])
        return row


def _cache_hit(ex: Exchange, reply: Reply | None) -> bool:
    if ex.metadata.get("cache") == "hit":
        return True
    header = ex.response_headers.get("x-ferro-cache") or (
        reply.headers.get("x-ferro-cache") if reply else None
    )
    return header == "hit"


async def _collect_text(stream: AsyncIterator[StreamChunk], into: list[str]) -> AsyncIterator[StreamChunk]:
    async for chunk in stream:
        if chunk.kind == "data":
            for choice in chunk.json().get("choices") or ():
                delta = choice.get("delta") or {}
                text = delta.get("content") if isinstance(delta, dict) else None
                if isinstance(text, str):
                    into.append(text)
        yield chunk
