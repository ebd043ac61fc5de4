"""What every provider adapter is: a `ProviderSpec` (how it is enabled and addressed) and a
`Provider` subclass that turns an `Exchange` in OpenAI shape into an upstream call and the
answer back into an OpenAI-shaped `Reply` (a JSON body or a stream of chunks).

Adapters raise `GatewayError` for every failure; `upstream_error()` maps an upstream's
status and error body to the status the client sees. Errors after a stream started are
raised from inside the stream iterator; the listener turns them into a final SSE error event.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import aiohttp
import orjson

from ferro_proxy.config import ProviderSettings, TimeoutConfig
from ferro_proxy.errors import GatewayError
from ferro_proxy.exchange import Exchange, Reply, Usage
from ferro_proxy.sse import iter_events, parse_event

if TYPE_CHECKING:
    from ferro_proxy.gateway import Gateway

ENDPOINTS = ("chat", "completions", "embeddings", "images", "passthrough")


@dataclass(frozen=True)
class ProviderSpec:
    """How a provider is enabled (environment or config) and what it can do."""

    name: str  # the virtual_key used in config
    display: str
    factory: Callable[[ResolvedSettings, Gateway], Provider]
    default_base_url: str
    env_key: str | None = None  # e.g. OPENAI_API_KEY; None when no key is needed
    env_base_url: str | None = None  # e.g. OPENAI_BASE_URL
    env_required: tuple[str, ...] = ()  # other variables that must all be set to enable it
    env_enables: tuple[str, ...] = ()  # any one of these enables it (OLLAMA_HOST, AWS_REGION)
    version_segment: str = ""  # appended to a bare-host base URL ("/v1", "/v1beta")
    model_prefixes: tuple[str, ...] = ()
    capabilities: frozenset[str] = frozenset({"chat", "stream"})
    hosts: tuple[str, ...] = ()  # public API hosts, for interception
    open_models: bool = False  # serves any model name (self-hosted, Ollama)

    def enabled_by_env(self, env: Mapping[str, str]) -> bool:
        if self.env_required and not all(env.get(v) for v in self.env_required):
            return False
        if self.env_key and env.get(self.env_key):
            return True
        return any(env.get(v) for v in self.env_enables)


@dataclass
class ResolvedSettings:
    """A provider's settings after config and environment are merged."""

    name: str
    api_key: str | None
    base_url: str
    headers: dict[str, str] = field(default_factory=dict)
    timeouts: TimeoutConfig = field(default_factory=TimeoutConfig)
    models: list[str] = field(default_factory=list)
    extra: ProviderSettings = field(default_factory=ProviderSettings)
    env: Mapping[str, str] = field(default_factory=dict)


def normalize_base_url(url: str, version_segment: str) -> str:
    """A bare host gets the provider's version segment; a URL with a path is kept as is."""
    url = url.rstrip("/")
    if version_segment:
        scheme_sep = url.find("://")
        rest = url[scheme_sep + 3 :] if scheme_sep >= 0 else url
        if "/" not in rest:
            url += version_segment
    return url


def resolve_settings(
    spec: ProviderSpec, cfg: ProviderSettings | None, env: Mapping[str, str]
) -> ResolvedSettings:
    cfg = cfg or ProviderSettings()
    api_key = cfg.api_key or (env.get(spec.env_key) if spec.env_key else None) or None
    base = (
        cfg.base_url or (env.get(spec.env_base_url) if spec.env_base_url else None) or spec.default_base_url
    )
    timeouts = cfg.timeout if isinstance(cfg.timeout, TimeoutConfig) else TimeoutConfig(total=cfg.timeout)
    return ResolvedSettings(
        name=spec.name,
        api_key=api_key,
        base_url=normalize_base_url(base, spec.version_segment),
        headers=dict(cfg.headers),
        timeouts=timeouts,
        models=list(cfg.models),
        extra=cfg,
        env=env,
    )


class Provider:
    """Base adapter. Subclasses implement the endpoints they support."""

    spec: ProviderSpec  # set by the registry when it builds the adapter
    default_models: tuple[str, ...] = ()  # listed by GET /v1/models besides config and catalog

    def __init__(self, settings: ResolvedSettings, gateway: Gateway) -> None:
        self.settings = settings
        self.gateway = gateway
        self.name = settings.name
        self._session: aiohttp.ClientSession | None = None

    # ------------------------------------------------------------ plumbing

    @property
    def session(self) -> aiohttp.ClientSession:
        """One pooled client session per upstream, created on first use."""
        if self._session is None or self._session.closed:
            connector = aiohttp.TCPConnector(
                limit=0, limit_per_host=256, ttl_dns_cache=300, keepalive_timeout=30
            )
            self._session = aiohttp.ClientSession(
                connector=connector, json_serialize=lambda o: orjson.dumps(o).decode(), trust_env=False
            )
        return self._session

    def start(self) -> None:
        """Called once when a running gateway starts serving this provider (never for `validate`):
        begin background work here, without blocking. `close` ends it."""

    async def close(self) -> None:
        if self._session is not None and not self._session.closed:
            await self._session.close()

    def client_timeout(self, ex: Exchange, override: TimeoutConfig | None = None) -> aiohttp.ClientTimeout:
        own = self.settings.timeouts
        total_cap = ex.metadata.get("deadline")
        connect = (override and override.connect) or own.connect
        if ex.stream:
            # The router times streams (first_byte, idle, stream_total, the deadline); `total`
            # and a per-read timeout would cut a healthy long stream. A backstop only.
            left = (total_cap - time.monotonic()) if total_cap is not None else None
            backstop = self.gateway.config.request_timeout if left is None else max(0.001, left)
            return aiohttp.ClientTimeout(total=backstop + 5.0, connect=connect)
        total = (override and override.total) or own.total or self.gateway.config.request_timeout
        if total_cap is not None:
            total = max(0.001, min(total, total_cap - time.monotonic()))
        return aiohttp.ClientTimeout(
            total=total,
            connect=connect,
            sock_read=(override and override.first_byte) or own.first_byte,
        )

    def api_key_for(self, ex: Exchange) -> str | None:
        """The configured key; else the client's own key (bring your own key), but only when
        this is the provider the router meant it for (never a fallback's)."""
        if self.settings.api_key:
            return self.settings.api_key
        return ex.client_api_key if ex.client_key_for == self.name else None

    def has_own_credentials(self) -> bool:
        """The gateway holds what this provider needs (a key, or none is needed)."""
        return bool(self.settings.api_key) or self.spec.env_key is None

    def serves(self, model: str) -> bool:
        if not model:
            return False
        if model in self.settings.models:
            return True
        catalog = self.gateway.catalog
        if catalog is not None and catalog.get(self.name, model) is not None:
            return True
        return any(model.startswith(p) for p in self.spec.model_prefixes)

    def supports(self, endpoint: str) -> bool:
        if endpoint == "passthrough":
            return hasattr(self, "passthrough")
        return endpoint in self.spec.capabilities or (endpoint == "chat" and "chat" in self.spec.capabilities)

    # ------------------------------------------------------------ the contract

    async def send(self, ex: Exchange, body: dict[str, Any], timeout: TimeoutConfig | None = None) -> Reply:
        """Serve `ex.endpoint` with `body` (OpenAI shape, model already resolved)."""
        handler = getattr(self, ex.endpoint, None)
        if handler is None or (ex.endpoint != "passthrough" and not self.supports(ex.endpoint)):
            raise GatewayError(
                400,
                f"provider {self.name!r} does not support the {ex.endpoint} endpoint",
                code="unsupported_endpoint",
                retryable=False,
                provider=self.name,
            )
        return await handler(ex, body, self.client_timeout(ex, timeout))

    async def list_models(self) -> list[dict[str, Any]]:
        """Models this provider serves, OpenAI `model` objects: from config, the catalog, and
        the adapter's own `default_models`."""
        names = list(self.settings.models)
        catalog = self.gateway.catalog
        if catalog is not None:
            names += [m for m in catalog.models_for(self.name) if m not in names]
        names += [m for m in self.default_models if m not in names]
        return [{"id": m, "object": "model", "created": 0, "owned_by": self.name} for m in names]

    def health(self) -> dict[str, Any]:
        return {"base_url_set": bool(self.settings.base_url), "key_configured": bool(self.settings.api_key)}


# ------------------------------------------------------------------ errors


def _error_message(body: bytes) -> tuple[str | None, str | None]:
    """(message, code) from the error bodies providers send."""
    try:
        data = orjson.loads(body) if body else None
    except orjson.JSONDecodeError:
        text = body.decode("utf-8", "replace").strip()
        return (text[:500] or None), None
    if isinstance(data, list) and data:
        data = data[0]
    if not isinstance(data, dict):
        return None, None
    err = data.get("error", data)
    if isinstance(err, str):
        return err, None
    if isinstance(err, dict):
        message = err.get("message") or err.get("detail") or data.get("message")
        code = err.get("code") or err.get("type") or err.get("status")
        return (str(message) if message is not None else None), (str(code) if code is not None else None)
    message = data.get("message") or data.get("detail")
    return (str(message) if message is not None else None), None


def upstream_error(
    provider: str, status: int, body: bytes, headers: Mapping[str, str] | None = None
) -> GatewayError:
    """Map an upstream error answer to the error the client sees."""
    message, code = _error_message(body)
    message = message or f"upstream answered {status}"
    retry_after = None
    if headers is not None:
        retry_after = _retry_after(headers.get("Retry-After") or headers.get("retry-after"))
    err = _map_upstream_status(provider, status, message, code, retry_after)
    err.upstream_status = status
    return err


def _map_upstream_status(
    provider: str, status: int, message: str, code: str | None, retry_after: float | None
) -> GatewayError:
    if status in (401, 403):
        return GatewayError(
            502,
            f"{provider} rejected the gateway's credentials ({status}): {message}",
            code="upstream_auth_error",
            type="api_error",
            retryable=True,
            provider=provider,
        )
    if status == 429:
        return GatewayError(
            429,
            f"{provider}: {message}",
            code=code or "rate_limit_exceeded",
            retry_after=retry_after,
            provider=provider,
        )
    if status == 408:
        return GatewayError(
            504, f"{provider} timed out: {message}", code="gateway_timeout", provider=provider
        )
    if status >= 500:
        return GatewayError(
            502,
            f"{provider} failed ({status}): {message}",
            code="upstream_error",
            type="api_error",
            provider=provider,
        )
    if status == 404:
        return GatewayError(
            404, f"{provider}: {message}", code=code or "not_found", retryable=False, provider=provider
        )
    return GatewayError(status, f"{provider}: {message}", code=code, retryable=False, provider=provider)


def _retry_after(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        from email.utils import parsedate_to_datetime

        try:
            return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
        except (TypeError, ValueError):
            return None


def transport_error(provider: str, exc: BaseException) -> GatewayError:
    """A failure to reach or hear from the upstream at all."""
    if isinstance(exc, asyncio.TimeoutError | TimeoutError):
        return GatewayError(
            504, f"{provider} did not answer in time", code="gateway_timeout", provider=provider
        )
    return GatewayError(
        502,
        f"{provider} could not be reached: {type(exc).__name__}",
        code="upstream_unreachable",
        type="api_error",
        provider=provider,
    )


async def read_body(provider: str, resp: aiohttp.ClientResponse) -> bytes:
    """The whole body of an upstream answer; the connection goes back to the pool."""
    try:
        return await resp.read()
    except (TimeoutError, aiohttp.ClientError) as exc:
        raise transport_error(provider, exc) from None
    finally:
        resp.release()


def parse_json_body(provider: str, raw: bytes, *, require_object: bool = True) -> Any:
    """Parse an upstream body; anything but JSON (an object, unless told otherwise) is a 502."""
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError:
        data = parse_json_body
    if data is parse_json_body or (require_object and not isinstance(data, dict)):
        what = "a JSON object" if require_object else "JSON"
        raise GatewayError(
            502, f"{provider} sent a body that is not {what}", code="upstream_bad_response", type="api_error"
        )
    return data


def parse_stream_json(provider: str, text: str) -> Any:
    """The JSON of one native stream event; anything else ends the stream with a 502."""
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        raise GatewayError(
            502,
            f"{provider} sent a stream event that is not JSON",
            code="upstream_stream_error",
            type="api_error",
        ) from None


async def json_events(provider: str, resp: aiohttp.ClientResponse) -> AsyncIterator[tuple[str | None, Any]]:
    """(event name, parsed data) for each SSE event of a native stream that carries data."""
    async for raw in iter_events(resp.content.iter_any()):
        name, data = parse_event(raw)
        if data:
            yield name, parse_stream_json(provider, data)


async def read_error(provider: str, resp: aiohttp.ClientResponse) -> GatewayError:
    try:
        body = await resp.read()
    except (TimeoutError, aiohttp.ClientError):
        body = b""
    return upstream_error(provider, resp.status, body, resp.headers)


# ------------------------------------------------------------------ streams


def stream_broken(provider: str, exc: BaseException) -> GatewayError:
    """A native or pass-through stream that failed in transit: 504 on a timeout, else 502."""
    return GatewayError(
        504 if isinstance(exc, TimeoutError) else 502,
        f"{provider} stream broke: {type(exc).__name__}",
        code="upstream_stream_error",
        type="api_error",
    )


def record_usage(ex: Exchange, usage: Usage | None) -> None:
    if usage is not None:
        ex.usage.add(usage)


def env_snapshot() -> dict[str, str]:
    return dict(os.environ)
