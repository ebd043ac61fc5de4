"""The filter chain: an onion of small filters around the terminal router.

A filter is a class registered by name with `@register_filter`. It declares a typed
`Config` (a msgspec Struct) and implements

    async def handle(self, ex: Exchange, next: Next) -> Reply

It may change `ex.body` before calling `next(ex)`, answer without calling it (a guardrail
block, a cache hit), call it several times (tool loops, retries), and look at or replace the
reply: `reply.json()` for a whole body, `reply.wrap_stream(fn)` for each streamed chunk,
`reply.on_complete(fn)` to act once the client has the whole answer (usage is final then).

Filters that only need the YAML stages can instead override `on_request` (stage
`before_request`), `on_response` (`after_request`) and `on_error` (`on_error`); the default
`handle` calls the ones the plugin's `stage` selects.

A filter that raises anything but `GatewayError` fails closed (500 `plugin_error`) unless
its `type` is `logging` or `metrics`, which fail open.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, ClassVar

import msgspec

from ferro_proxy.config import Base, ConfigError, PluginConfig, convert
from ferro_proxy.errors import GatewayError
from ferro_proxy.exchange import Exchange, Reply

if TYPE_CHECKING:
    from ferro_proxy.gateway import Gateway

log = logging.getLogger("ferro_proxy.chain")

Next = Callable[[Exchange], Awaitable[Reply]]
FAIL_OPEN_TYPES = frozenset({"logging", "metrics"})
STAGES = ("before_request", "after_request", "on_error")


class EmptyConfig(Base):
    pass


class Filter:
    """Base class of every filter. Subclasses set `name`, `type`, `Config`, `description`."""

    name: ClassVar[str] = ""
    type: ClassVar[str] = "transform"
    description: ClassVar[str] = ""
    Config: ClassVar[type[msgspec.Struct]] = EmptyConfig
    default_stages: ClassVar[tuple[str, ...]] = STAGES

    def __init__(self, config: Any, gateway: Gateway, plugin: PluginConfig | None = None) -> None:
        self.config = config
        self.gateway = gateway
        self.plugin = plugin
        self.stages = frozenset([plugin.stage] if plugin and plugin.stage else self.default_stages)
        self.fails_open = (plugin.type if plugin and plugin.type else self.type) in FAIL_OPEN_TYPES

    @property
    def label(self) -> str:
        return self.plugin.name if self.plugin else self.name

    async def start(self) -> None:
        """Open connections, start background tasks. Called once before traffic."""

    async def close(self) -> None:
        """Flush and release what `start` opened. Called on shutdown and on reload."""

    async def handle(self, ex: Exchange, next: Next) -> Reply:
        if "before_request" in self.stages:
            early = await self.on_request(ex)
            if early is not None:
                return early
        try:
            reply = await next(ex)
        except GatewayError as err:
            if "on_error" in self.stages:
                recovered = await self.on_error(ex, err)
                if recovered is not None:
                    return recovered
            raise
        if "after_request" in self.stages:
            changed = await self.on_response(ex, reply)
            if changed is not None:
                return changed
        return reply

    async def on_request(self, ex: Exchange) -> Reply | None:
        return None

    async def on_response(self, ex: Exchange, reply: Reply) -> Reply | None:
        return None

    async def on_error(self, ex: Exchange, err: GatewayError) -> Reply | None:
        return None

    def health(self) -> dict[str, Any] | None:
        """Extra detail for the deep /health, if the filter has any."""
        return None


FILTERS: dict[str, type[Filter]] = {}


def register_filter(cls: type[Filter]) -> type[Filter]:
    if not cls.name:
        raise TypeError(f"{cls.__name__} has no name")
    FILTERS[cls.name] = cls
    return cls


def load_builtin_filters() -> None:
    """Import the bundled filter modules so they register themselves."""
    import filters  # noqa: F401  (the package imports its modules)


def build_filters(plugins: list[PluginConfig], gateway: Gateway) -> list[Filter]:
    """Instantiate the enabled plugins in order, validating each one's config."""
    load_builtin_filters()
    errors: list[str] = []
    built: list[Filter] = []
    for i, plugin in enumerate(plugins):
        if not plugin.enabled:
            continue
        cls = FILTERS.get(plugin.name)
        if cls is None:
            errors.append(
                f"plugins[{i}].name: unknown plugin {plugin.name!r} (known: {', '.join(sorted(FILTERS))})"
            )
            continue
        if plugin.type and plugin.type != cls.type:
            errors.append(f"plugins[{i}].type: {plugin.name} is of type {cls.type!r}, not {plugin.type!r}")
            continue
        try:
            config = convert(cls.Config, plugin.config, path=f"plugins[{i}].config")
            built.append(cls(config, gateway, plugin))
        except ConfigError as exc:
            errors.extend(exc.errors)
        except ValueError as exc:  # a filter's own check of its config (bad regex ...)
            errors.append(f"plugins[{i}].config: {exc}")
    if errors:
        raise ConfigError(errors)
    return built


class Chain:
    """Runs `filters` in order around `terminal`."""

    def __init__(self, filters: list[Filter], terminal: Filter) -> None:
        self.filters = filters
        self.terminal = terminal
        self._entry = self._link(0)

    def _link(self, index: int) -> Next:
        if index == len(self.filters):
            terminal = self.terminal

            async def run_terminal(ex: Exchange) -> Reply:
                return await terminal.handle(ex, _no_next)

            return run_terminal
        current = self.filters[index]
        downstream = self._link(index + 1)

        async def run(ex: Exchange) -> Reply:
            return await _invoke(current, ex, downstream)

        return run

    async def __call__(self, ex: Exchange) -> Reply:
        return await self._entry(ex)

    async def start(self) -> None:
        for f in [*self.filters, self.terminal]:
            await f.start()

    async def close(self) -> None:
        for f in [*self.filters, self.terminal]:
            try:
                await f.close()
            except Exception:
                log.exception("filter %s failed to close", f.label)


async def _no_next(ex: Exchange) -> Reply:
    raise GatewayError(500, "the terminal filter has no next", code="plugin_error")


async def _invoke(f: Filter, ex: Exchange, downstream: Next) -> Reply:
    """Run one filter; tell its own failures from ones that came from downstream."""
    seen: dict[str, Any] = {}

    async def guarded_next(e: Exchange) -> Reply:
        try:
            reply = await downstream(e)
        except BaseException as exc:
            seen["raised"] = exc
            raise
        seen["reply"] = reply
        return reply

    try:
        return await f.handle(ex, guarded_next)
    except GatewayError:
        raise
    except Exception as exc:
        if exc is seen.get("raised"):
            raise
        if f.fails_open:
            log.warning("filter %s failed open: %s", f.label, type(exc).__name__, exc_info=True)
            reply = seen.get("reply")
            return reply if reply is not None else await downstream(ex)
        log.error("filter %s failed: %s", f.label, type(exc).__name__, exc_info=True)
        raise GatewayError(500, f"filter {f.label!r} failed", code="plugin_error", type="api_error") from None
