"""The gateway's configuration: typed msgspec Structs, loaded from YAML or JSON.

`load_config(path)` expands `${VAR}` / `${VAR:-default}`, checks the whole document against
the Structs (reporting *every* bad field at once, each with its path, e.g.
`targets[1].retry.attempts: expected int, got str`), then converts it. Filter configs are
checked the same way against each filter's own Struct when the chain is built.
"""

from __future__ import annotations

import json
import os
import re
import types
import typing
from pathlib import Path
from typing import Annotated, Any, Literal, Union

import msgspec
import yaml

from ferro_proxy.netpolicy import parse_host_port
from ferro_proxy.redaction import redact_text

# Seconds; in the document also strings like "500ms", "30s", "2m".
DURATION = msgspec.Meta(description="duration in seconds")
Duration = Annotated[float, DURATION]


class ConfigError(Exception):
    """A config that cannot be used; `errors` lists every problem with its path."""

    def __init__(self, errors: list[str], source: str | None = None) -> None:
        self.errors = [redact_text(e) for e in errors]  # messages quote values: never a secret one
        self.unredacted = list(errors)  # only to re-word (unexpanded_errors); never shown
        self.source = source
        where = f"{source}: " if source else ""
        super().__init__(where + "; ".join(self.errors))


class Base(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True, kw_only=True):
    pass


class RetryConfig(Base):
    attempts: int = 1
    on_status_codes: list[int] = msgspec.field(default_factory=lambda: [408, 429, 500, 502, 503, 504])
    initial_backoff_ms: int = 100
    max_backoff_ms: int = 2000


class CircuitBreakerConfig(Base):
    failure_threshold: int = 5
    success_threshold: int = 1
    timeout: Duration = 30.0
    half_open_max: int = 1


class TimeoutConfig(Base):
    connect: Duration | None = None
    first_byte: Duration | None = None  # a stream: to its first content chunk
    total: Duration | None = None  # non-streamed requests only
    idle: Duration | None = None  # a stream: the longest gap between two chunks
    stream_total: Duration | None = None  # a stream: its whole length (a cap of the gateway's own)


class TargetConfig(Base):
    virtual_key: str
    weight: float = 1.0
    retry: RetryConfig | None = None
    circuit_breaker: CircuitBreakerConfig | None = None
    models: list[str] = msgspec.field(default_factory=list)
    model: str | None = None  # rewrite the request's model for this target
    label: str | None = None  # ab-test variant label
    timeout: TimeoutConfig | Duration | None = None
    max_concurrency: int | None = None
    max_queue: int = 100


class ConditionConfig(Base):
    key: Literal[
        "model",
        "model_prefix",
        "header",
        "metadata",
        "prompt_contains",
        "prompt_not_contains",
        "prompt_regex",
    ]
    value: str
    target_key: str
    name: str | None = None  # header or metadata field name, for key: header|metadata


class StrategyConfig(Base):
    mode: Literal[
        "single",
        "fallback",
        "loadbalance",
        "conditional",
        "content-based",
        "ab-test",
        "least-latency",
        "cost-optimized",
    ] = "single"
    conditions: list[ConditionConfig] = msgspec.field(default_factory=list)
    unpriced: Literal["fallback", "skip", "allow"] = "fallback"
    latency_window: int = 50  # least-latency: samples per target in the rolling p50
    # cost-optimized: output tokens assumed when the request sets no max_tokens
    expected_output_tokens: int = 512


class PluginConfig(Base):
    name: str
    type: str | None = None
    stage: Literal["before_request", "after_request", "on_error"] | None = None
    enabled: bool = True
    config: dict[str, Any] = msgspec.field(default_factory=dict)


class McpServerConfig(Base):
    name: str
    url: str
    headers: dict[str, str] = msgspec.field(default_factory=dict)
    allowed_tools: list[str] | None = None
    max_call_depth: int = 5
    timeout_seconds: float = 30.0
    required: bool = False


class ProviderSettings(Base):
    api_key: str | None = None
    base_url: str | None = None
    timeout: TimeoutConfig | Duration | None = None
    headers: dict[str, str] = msgspec.field(default_factory=dict)
    models: list[str] = msgspec.field(default_factory=list)
    enabled: bool = True
    # Provider-specific settings (Azure, Vertex, Bedrock ...):
    api_version: str | None = None
    deployment: str | None = None
    endpoint: str | None = None
    organization: str | None = None
    project: str | None = None
    region: str | None = None
    service_account_json: str | None = None
    access_key_id: str | None = None
    secret_access_key: str | None = None
    session_token: str | None = None
    # Bedrock: auto (the AWS chain) | static | bearer | web_identity | container | imds
    credentials: str | None = None
    # (Vertex AI: auto | service_account | api_key | application_credentials | metadata;
    #  Azure OpenAI / Foundry: auto | api_key | entra)
    account_id: str | None = None  # Cloudflare Workers AI


class AuthConfig(Base):
    required: bool = False
    # Key store down: keys it said were active within this long keep working (0: none do).
    stale_grace: Duration = 300.0


class InterceptConfig(Base):
    enabled: bool = False
    hosts: list[str] | None = None
    extra_hosts: list[str] = msgspec.field(default_factory=list)
    passthrough: Literal["allow", "deny"] = "allow"
    passthrough_hosts: list[str] = msgspec.field(default_factory=list)  # non-empty: only these
    passthrough_allow_private: bool = False  # tunnels to loopback/private/link-local addresses
    ca_dir: str | None = None
    ca_cert: str | None = None
    ca_key: str | None = None
    replace_credentials: bool = False
    transparent_listen: str | None = None
    handshake_timeout: Duration = 10.0  # a client that never finishes its TLS handshake
    connect_timeout: Duration = 10.0  # reaching a tunnelled host
    head_timeout: Duration = 30.0  # a connection that never sends a complete request head


class FetchConfig(Base):
    """Downloads the gateway makes on a client's behalf (image URLs) or an upstream's (output URLs)."""

    allow_http: bool = False  # plain http:// besides https://
    # UNSAFE outside tests: also reach loopback, link-local (cloud metadata), private and CGNAT addresses.
    allow_private: bool = False
    max_bytes: int = 20 * 1024 * 1024
    timeout: Duration = 10.0


class ListenerConfig(Base):
    """Limits on one listener's client connections (slow or greedy clients)."""

    header_timeout: Duration = 10.0  # connect (or a kept-alive request's first byte) to end of head
    idle_timeout: Duration = 75.0  # a kept-alive connection waiting for its next request
    body_timeout: Duration = 60.0  # end of the head to end of the request body
    max_connections: int = 1024  # past it, new connections get 503


class AdminListenerConfig(ListenerConfig):
    max_connections: int = 64


class ServerConfig(Base):
    proxy: ListenerConfig = msgspec.field(default_factory=ListenerConfig)
    admin: AdminListenerConfig = msgspec.field(default_factory=AdminListenerConfig)


class GatewayConfig(Base):
    strategy: StrategyConfig = msgspec.field(default_factory=StrategyConfig)
    targets: list[TargetConfig] = msgspec.field(default_factory=list)
    aliases: dict[str, str] = msgspec.field(default_factory=dict)
    plugins: list[PluginConfig] = msgspec.field(default_factory=list)
    mcp_servers: list[McpServerConfig] = msgspec.field(default_factory=list)
    providers: dict[str, ProviderSettings] = msgspec.field(default_factory=dict)
    max_request_bytes: int = 10 * 1024 * 1024
    request_timeout: Duration = 600.0
    # A stream's headers wait this long for its first chunk (a quick failure keeps its status and
    # fails over); then they go out and `sse_keepalive` comments follow until the first chunk.
    stream_header_hold: Duration = 3.0
    sse_keepalive: Duration = 10.0  # 0: none
    auth: AuthConfig = msgspec.field(default_factory=AuthConfig)
    intercept: InterceptConfig = msgspec.field(default_factory=InterceptConfig)
    fetch: FetchConfig = msgspec.field(default_factory=FetchConfig)
    server: ServerConfig = msgspec.field(default_factory=ServerConfig)
    model_catalog: str | None = None  # a file or URL overriding the bundled catalog
    # Env variables a config sent through the admin API may reference as ${NAME}; read from the
    # config file only (the admin API cannot change it). Empty: API configs are literal.
    admin_env_allowlist: list[str] = msgspec.field(default_factory=list)


# ---------------------------------------------------------------- env expansion

_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
ENV_REFERENCE = _VAR  # what `expand_env` substitutes: group 1 the name, group 2 the default


def expand_env(value: Any, env: typing.Mapping[str, str] | None = None) -> Any:
    """Replace `${VAR}` and `${VAR:-default}` in every string of a parsed document."""
    env = os.environ if env is None else env
    if isinstance(value, str):
        if "${" not in value:
            return value
        return _VAR.sub(
            lambda m: env.get(m.group(1)) or (m.group(2) if m.group(2) is not None else ""), value
        )
    if isinstance(value, list):
        return [expand_env(v, env) for v in value]
    if isinstance(value, dict):
        return {k: expand_env(v, env) for k, v in value.items()}
    return value


# ---------------------------------------------------------------- validation

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$")
_UNIT = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}


def parse_duration(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        m = _DURATION.match(value)
        if m:
            return float(m.group(1)) * _UNIT[m.group(2)]
    return None


def _type_name(tp: Any) -> str:
    if tp is type(None):
        return "null"
    if typing.get_origin(tp) is Annotated:
        return "duration" if DURATION in typing.get_args(tp) else _type_name(typing.get_args(tp)[0])
    if tp is float:
        return "number"
    if isinstance(tp, type):
        if issubclass(tp, msgspec.Struct):
            return "object"
        return {dict: "object", list: "array", str: "str", int: "int", bool: "bool"}.get(tp, tp.__name__)
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if origin in (list, dict):
        return _type_name(origin)
    if origin in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    return str(tp)


def _value_name(value: Any) -> str:
    if value is None:
        return "null"
    return {bool: "bool", int: "int", float: "float", str: "str", list: "array", dict: "object"}.get(
        type(value), type(value).__name__
    )


def _join(path: str, key: str | int) -> str:
    if isinstance(key, int):
        return f"{path}[{key}]"
    return f"{path}.{key}" if path else key


def check(tp: Any, value: Any, path: str, errors: list[str]) -> Any:
    """Check `value` against type `tp`; append problems to `errors`; return a normalized value."""
    if tp is Any:
        return value
    origin = typing.get_origin(tp)
    if origin is Annotated:
        base, *marks = typing.get_args(tp)
        if DURATION in marks:
            seconds = parse_duration(value)
            if seconds is None:
                errors.append(f"{path}: expected a duration (seconds or '500ms', '30s', '2m'), got {value!r}")
                return value
            return seconds
        return check(base, value, path, errors)
    if origin in (Union, types.UnionType):
        options = typing.get_args(tp)
        if value is None and type(None) in options:
            return None
        for option in options:
            if option is type(None):
                continue
            trial: list[str] = []
            out = check(option, value, path, trial)
            if not trial:
                return out
        # Report through the most specific option (a Struct for dicts) if there is one.
        for option in options:
            if isinstance(value, dict) and isinstance(option, type) and issubclass(option, msgspec.Struct):
                return check(option, value, path, errors)
        errors.append(f"{path or '<root>'}: expected {_type_name(tp)}, got {_value_name(value)}")
        return value
    if origin is Literal:
        if value not in typing.get_args(tp):
            errors.append(f"{path}: expected {_type_name(tp)}, got {value!r}")
        return value
    if origin is list:
        if not isinstance(value, list):
            errors.append(f"{path}: expected array, got {_value_name(value)}")
            return value
        (item_tp,) = typing.get_args(tp) or (Any,)
        return [check(item_tp, v, _join(path, i), errors) for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            errors.append(f"{path}: expected object, got {_value_name(value)}")
            return value
        key_tp, val_tp = typing.get_args(tp) or (str, Any)
        return {k: check(val_tp, v, _join(path, str(k)), errors) for k, v in value.items()}
    if isinstance(tp, type) and issubclass(tp, msgspec.Struct):
        if not isinstance(value, dict):
            errors.append(f"{path or '<root>'}: expected object, got {_value_name(value)}")
            return value
        hints = typing.get_type_hints(tp, include_extras=True)
        fields = {f.encode_name: f for f in msgspec.structs.fields(tp)}
        out: dict[str, Any] = {}
        for key, v in value.items():
            field = fields.get(key)
            if field is None:
                errors.append(
                    f"{_join(path, key)}: unknown field (expected one of {', '.join(sorted(fields))})"
                )
                continue
            out[key] = check(hints[field.name], v, _join(path, key), errors)
        for name, field in fields.items():
            if field.required and name not in value:
                errors.append(f"{_join(path, name)}: required field missing")
        return out
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            errors.append(f"{path}: expected number, got {_value_name(value)}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            errors.append(f"{path}: expected int, got {_value_name(value)}")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            errors.append(f"{path}: expected bool, got {_value_name(value)}")
        return value
    if tp is str:
        if not isinstance(value, str):
            errors.append(f"{path}: expected str, got {_value_name(value)}")
        return value
    return value


def convert(tp: type[msgspec.Struct], data: Any, path: str = "", source: str | None = None) -> Any:
    """Validate `data` against `tp` (all errors at once) and build the Struct."""
    errors: list[str] = []
    normalized = check(tp, data if data is not None else {}, path, errors)
    if errors:
        raise ConfigError(errors, source)
    try:
        return msgspec.convert(normalized, tp)
    except msgspec.ValidationError as exc:  # a constraint the walker does not model
        raise ConfigError([str(exc)], source) from None


# ---------------------------------------------------------------- semantic checks


def semantic_errors(cfg: GatewayConfig) -> list[str]:
    errors: list[str] = []
    for i, t in enumerate(cfg.targets):
        if t.weight < 0:
            errors.append(f"targets[{i}].weight: must be >= 0")
        if t.retry:
            if t.retry.attempts < 1:
                errors.append(f"targets[{i}].retry.attempts: must be >= 1")
            if t.retry.initial_backoff_ms < 0 or t.retry.max_backoff_ms < t.retry.initial_backoff_ms:
                errors.append(f"targets[{i}].retry: need 0 <= initial_backoff_ms <= max_backoff_ms")
        if t.circuit_breaker:
            cb = t.circuit_breaker
            for name in ("failure_threshold", "success_threshold", "half_open_max"):
                if getattr(cb, name) < 1:
                    errors.append(f"targets[{i}].circuit_breaker.{name}: must be >= 1")
            if cb.timeout <= 0:
                errors.append(f"targets[{i}].circuit_breaker.timeout: must be > 0")
        if t.max_concurrency is not None and t.max_concurrency < 1:
            errors.append(f"targets[{i}].max_concurrency: must be >= 1")
        if t.max_queue < 0:
            errors.append(f"targets[{i}].max_queue: must be >= 0")
    if cfg.strategy.latency_window < 1:
        errors.append("strategy.latency_window: must be >= 1")
    if cfg.auth.stale_grace < 0:
        errors.append("auth.stale_grace: must be >= 0")
    for field in ("stream_header_hold", "sse_keepalive"):
        if getattr(cfg, field) < 0:
            errors.append(f"{field}: must be >= 0")
    if cfg.strategy.expected_output_tokens < 0:
        errors.append("strategy.expected_output_tokens: must be >= 0")
    keys = {t.virtual_key for t in cfg.targets} | {t.label for t in cfg.targets if t.label}
    for i, c in enumerate(cfg.strategy.conditions):
        if keys and c.target_key not in keys:
            errors.append(
                f"strategy.conditions[{i}].target_key: no target with virtual_key or label {c.target_key!r}"
            )
        if c.key == "prompt_regex":
            try:
                re.compile(c.value)
            except re.error as exc:
                errors.append(f"strategy.conditions[{i}].value: bad regular expression: {exc}")
        if c.key in ("header", "metadata") and not c.name:
            errors.append(f"strategy.conditions[{i}].name: required for key {c.key!r}")
    if cfg.max_request_bytes < 1:
        errors.append("max_request_bytes: must be >= 1")
    for i, s in enumerate(cfg.mcp_servers):
        if not s.url.startswith(("http://", "https://")):
            errors.append(f"mcp_servers[{i}].url: must be an http(s) URL")
    for i, name in enumerate(cfg.admin_env_allowlist):
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
            errors.append(f"admin_env_allowlist[{i}]: must be an environment variable name")
    for name in ("proxy", "admin"):
        listener = getattr(cfg.server, name)
        for field in ("header_timeout", "idle_timeout", "body_timeout"):
            if not 0 < getattr(listener, field) <= 86400:
                errors.append(f"server.{name}.{field}: must be > 0 and <= 86400 seconds")
        if listener.max_connections < 1:
            errors.append(f"server.{name}.max_connections: must be >= 1")
    for i, entry in enumerate(cfg.intercept.passthrough_hosts):
        try:
            parse_host_port(entry)
        except ValueError as exc:
            errors.append(f"intercept.passthrough_hosts[{i}]: {exc}")
    return errors


# ---------------------------------------------------------------- loading


def parse_document(text: str, source: str) -> Any:
    try:
        if source.endswith(".json"):
            return json.loads(text) if text.strip() else {}
        return yaml.safe_load(text) or {}
    except (yaml.YAMLError, json.JSONDecodeError) as exc:
        raise ConfigError([f"cannot parse: {exc}"], source) from None


def config_from_data(
    data: Any,
    source: str | None = None,
    env: typing.Mapping[str, str] | None = None,
    *,
    expand: typing.Callable[[Any], Any] | None = None,
) -> GatewayConfig:
    """Expand (`expand`, by default `expand_env` with `env`), validate and build the config.

    Error messages quote values as written, never as expanded from the environment."""
    expanded = expand(data) if expand is not None else expand_env(data, env)
    try:
        cfg = convert(GatewayConfig, expanded, source=source)
        problems = semantic_errors(cfg)
        if problems:
            raise ConfigError(problems, source)
    except ConfigError as exc:
        raise ConfigError(unexpanded_errors(exc.unredacted, data, expanded), source) from None
    return cfg


def _expanded_pairs(raw: Any, expanded: Any, out: dict[str, str]) -> None:
    if isinstance(raw, str):
        if isinstance(expanded, str) and expanded != raw:
            out[repr(expanded)] = repr(raw)
            if len(expanded) >= 6:  # shorter values would match ordinary words of a message
                out[expanded] = raw
    elif isinstance(raw, list) and isinstance(expanded, list):
        for r, e in zip(raw, expanded, strict=False):
            _expanded_pairs(r, e, out)
    elif isinstance(raw, dict) and isinstance(expanded, dict):
        for key, r in raw.items():
            if key in expanded:
                _expanded_pairs(r, expanded[key], out)


def unexpanded_errors(errors: list[str], raw: Any, expanded: Any) -> list[str]:
    """`errors` with each env-expanded string of `expanded` put back as written in `raw`."""
    pairs: dict[str, str] = {}
    _expanded_pairs(raw, expanded, pairs)
    if not pairs:
        return errors
    pattern = re.compile("|".join(re.escape(k) for k in sorted(pairs, key=len, reverse=True)))
    return [pattern.sub(lambda m: pairs[m.group(0)], message) for message in errors]


def load_config(path: str | os.PathLike[str], env: typing.Mapping[str, str] | None = None) -> GatewayConfig:
    source = str(path)
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise ConfigError([f"cannot read: {exc.strerror}"], source) from None
    return config_from_data(parse_document(text, source), source, env)


def to_builtins(cfg: GatewayConfig) -> dict[str, Any]:
    return msgspec.to_builtins(cfg)
