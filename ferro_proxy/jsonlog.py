"""JSON-lines logging on stdout, and the redaction that keeps secrets out of it."""

from __future__ import annotations

import logging
import sys
import threading
import time
from typing import Any, TextIO

import orjson

from ferro_proxy.redaction import redact_obj, redact_text

# The one redaction point (ferro_proxy/redaction.py), under the name older callers use.
scrub = redact_text


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": redact_text(record.getMessage()),
        }
        fields = getattr(record, "fields", None)
        if fields:
            out.update({k: redact_obj(v) for k, v in fields.items()})
        if record.exc_info and record.exc_info[0] is not None:
            out["error"] = redact_text(f"{record.exc_info[0].__name__}: {record.exc_info[1]}")
        return orjson.dumps(out, default=str).decode()


class BatchingStreamHandler(logging.Handler):
    """Formats on the caller's thread; a background thread writes the lines in batches.

    A log line then costs the event loop a list append instead of a write syscall, and a
    stdout that stops reading (a full pipe) cannot block request handling: at most
    `max_pending` lines wait, later ones are dropped and counted in a warning line.
    `flush()` (also run by `logging.shutdown` at exit) writes what is pending at once.
    """

    def __init__(self, stream: TextIO, max_pending: int = 10_000, linger: float = 0.02) -> None:
        super().__init__()
        self.stream = stream
        self.max_pending = max_pending
        self.linger = linger  # lets a burst of lines collect into one write
        self._pending: list[str] = []
        self._pending_lock = threading.Lock()
        # Not `self.lock`: logging holds that around emit(), which must never wait on a write.
        self._write_lock = threading.Lock()
        self._wake = threading.Event()
        self._dropped = 0
        self._closed = False
        self._writer: threading.Thread | None = None

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = self.format(record)
        except Exception:
            self.handleError(record)
            return
        with self._pending_lock:
            if len(self._pending) >= self.max_pending:
                self._dropped += 1
                return
            self._pending.append(line)
            first = len(self._pending) == 1
        if self._closed:
            self.flush()
        elif first:
            if self._writer is None:
                self._start_writer()
            self._wake.set()

    def _start_writer(self) -> None:
        with self._pending_lock:
            if self._writer is not None:
                return
            self._writer = threading.Thread(target=self._run, name="ferro-log-writer", daemon=True)
        self._writer.start()

    def _run(self) -> None:
        while not self._closed:
            self._wake.wait()
            self._wake.clear()
            if self.linger > 0:
                time.sleep(self.linger)
            self.flush()

    def flush(self) -> None:
        with self._write_lock:  # keeps batches in order whichever thread writes them
            with self._pending_lock:
                lines, self._pending = self._pending, []
                dropped, self._dropped = self._dropped, 0
            if dropped:
                lines.append(
                    orjson.dumps(
                        {
                            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime()) + ".000Z",
                            "level": "warning",
                            "logger": "ferro_proxy.log",
                            "msg": f"dropped {dropped} log lines: the log output is not keeping up",
                        }
                    ).decode()
                )
            if not lines:
                return
            try:
                self.stream.write("\n".join(lines) + "\n")
                self.stream.flush()
            except (OSError, ValueError):  # stdout closed or gone: nothing left to tell
                pass

    def close(self) -> None:
        self._closed = True
        self._wake.set()
        self.flush()
        super().close()


def setup_logging(level: str = "INFO") -> None:
    handler = BatchingStreamHandler(sys.stdout)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
        if isinstance(old, BatchingStreamHandler):
            old.close()
    root.addHandler(handler)
    root.setLevel(level.upper() if isinstance(level, str) else level)
    logging.getLogger("aiohttp.access").disabled = True


def log_fields(logger: logging.Logger, level: int, msg: str, **fields: Any) -> None:
    if logger.isEnabledFor(level):
        logger.log(level, msg, extra={"fields": fields})
