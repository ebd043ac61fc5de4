"""JSON-lines logging on stdout, and the redaction that keeps secrets out of it."""

from __future__ import annotations

import logging
import re
import sys
import time
from typing import Any

import orjson

_SECRETISH = re.compile(
    r"(?i)(bearer\s+)[A-Za-z0-9._\-~+/=]{6,}|\b(sk-[A-Za-z0-9_\-]{6,}|sk-ant-[A-Za-z0-9_\-]{6,}|AIza[0-9A-Za-z_\-]{20,}|AKIA[0-9A-Z]{16})"
)


def scrub(text: str) -> str:
    """Mask anything that looks like a credential."""
    return _SECRETISH.sub(lambda m: (m.group(1) or "") + "[REDACTED]", text)


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": scrub(record.getMessage()),
        }
        fields = getattr(record, "fields", None)
        if fields:
            out.update(fields)
        if record.exc_info and record.exc_info[0] is not None:
            out["error"] = scrub(f"{record.exc_info[0].__name__}: {record.exc_info[1]}")
        return orjson.dumps(out, default=str).decode()


def setup_logging(level: str = "INFO") -> None:
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper() if isinstance(level, str) else level)
    logging.getLogger("aiohttp.access").disabled = True


def log_fields(logger: logging.Logger, level: int, msg: str, **fields: Any) -> None:
    if logger.isEnabledFor(level):
        logger.log(level, msg, extra={"fields": fields})
