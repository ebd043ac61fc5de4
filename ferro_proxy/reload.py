"""Watching the config file and reloading it when it changes.

Polls (default every second, `FERRO_CONFIG_WATCH_INTERVAL`; `0` turns watching off) the
file's resolved path, inode, size and mtime. That catches an editor's save, a rename over
the file, and the way a Kubernetes ConfigMap volume updates: the `..data` symlink is
swapped to a new timestamped directory, so the resolved path changes even though the
file's own path does not. A change is read, validated and applied atomically through the
`ConfigManager` (a new config version, actor `file`); requests in flight finish on the
old config. A bad file keeps the running config, is logged with its path, and counts
`ferro_config_reloads_total{result="error"}`.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING

from ferro_proxy.config import ConfigError, parse_document

if TYPE_CHECKING:
    from ferro_proxy.admin.config_manager import ConfigManager

log = logging.getLogger("ferro_proxy.reload")

Signature = tuple[str, int, int, int] | None


def file_signature(path: str) -> Signature:
    try:
        real = os.path.realpath(path)
        st = os.stat(real)
    except OSError:
        return None
    return real, st.st_ino, st.st_size, st.st_mtime_ns


class ConfigWatcher:
    def __init__(self, manager: ConfigManager, path: str, interval: float = 1.0) -> None:
        self.manager = manager
        self.path = path
        self.interval = interval
        self._signature: Signature = file_signature(path)
        self._digest: str | None = None
        self._task: asyncio.Task[None] | None = None

    def start(self, current_text: str | None = None) -> ConfigWatcher:
        if current_text is not None:
            self._digest = hashlib.sha256(current_text.encode()).hexdigest()
        self._task = asyncio.get_running_loop().create_task(self._run(), name="ferro-config-watch")
        return self

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            try:
                await self.check()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("config watch failed on %s", self.path)

    async def check(self) -> bool:
        """Reload if the file changed since the last look; True if a new config was applied."""
        signature = file_signature(self.path)
        if signature == self._signature or signature is None:
            return False
        await asyncio.sleep(0.05)  # let a writer finish; re-read the signature after
        signature = file_signature(self.path)
        self._signature = signature
        try:
            text = await asyncio.to_thread(Path(self.path).read_text)
        except OSError as exc:
            log.error("config reload failed: cannot read %s: %s", self.path, exc.strerror)
            self.manager.gateway.metrics.config_reloads.labels("error").inc()
            return False
        digest = hashlib.sha256(text.encode()).hexdigest()
        if digest == self._digest:
            return False
        self._digest = digest
        try:
            document = parse_document(text, self.path)
        except ConfigError as exc:
            self.manager.gateway.metrics.config_reloads.labels("error").inc()
            self._report(exc)
            return False
        try:  # counts its own success or error
            version = await self.manager.apply_document(document, actor="file", source=self.path)
        except ConfigError as exc:
            self._report(exc)
            return False
        log.info(
            "config reloaded from %s",
            self.path,
            extra={"fields": {"path": self.path, "version": version.version if version else None}},
        )
        return True

    def _report(self, exc: ConfigError) -> None:
        log.error(
            "config reload failed: %s has %d error(s); keeping the running config: %s",
            self.path,
            len(exc.errors),
            "; ".join(exc.errors),
            extra={"fields": {"path": self.path, "errors": exc.errors}},
        )

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except (asyncio.CancelledError, Exception):
                pass
            self._task = None
