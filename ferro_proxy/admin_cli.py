"""`ferro-proxy plugins` and `ferro-proxy admin …`: inspect and steer a running gateway.

`admin` talks to the admin listener (`--gateway-url`, env `FERRO_ADMIN_URL`, default
http://127.0.0.1:8081) with a key (`--api-key`, env `FERRO_API_KEY`), and prints
`--format table|json|yaml`. Exit codes: 0 done, 1 the gateway refused (message shown),
2 the gateway could not be reached.
"""

from __future__ import annotations

import argparse
import os
import sys
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import orjson
import yaml

from ferro_proxy.cli import SUBCOMMANDS

DEFAULT_URL = "http://127.0.0.1:8081"


class CliError(Exception):
    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(message)
        self.exit_code = exit_code


# ---------------------------------------------------------------- HTTP


def request(
    args: argparse.Namespace, method: str, path: str, body: Any = None, query: dict | None = None
) -> Any:
    base = (getattr(args, "gateway_url", None) or os.environ.get("FERRO_ADMIN_URL") or DEFAULT_URL).rstrip(
        "/"
    )
    key = getattr(args, "api_key", None) or os.environ.get("FERRO_API_KEY") or ""
    params = {k: v for k, v in (query or {}).items() if v not in (None, "")}
    url = base + path + ("?" + urllib.parse.urlencode(params) if params else "")
    headers = {"Accept": "application/json"}
    if key:
        headers["Authorization"] = f"Bearer {key}"
    data = None
    if body is not None:
        data = orjson.dumps(body)
        headers["Content-Type"] = "application/json"
    req = urllib.request.Request(url, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=float(os.environ.get("FERRO_ADMIN_TIMEOUT", "15"))) as resp:
            raw = resp.read()
    except urllib.error.HTTPError as err:
        raise CliError(_refusal(err, method, path, bool(key))) from None
    except (urllib.error.URLError, OSError) as err:
        reason = getattr(err, "reason", err)
        raise CliError(
            f"cannot reach the gateway admin API at {base}: {reason}. Is the gateway running? "
            "Set --gateway-url or FERRO_ADMIN_URL.",
            exit_code=2,
        ) from None
    return orjson.loads(raw) if raw else None


def _refusal(err: urllib.error.HTTPError, method: str, path: str, had_key: bool) -> str:
    try:
        payload = orjson.loads(err.read() or b"{}")
        message = payload["error"]["message"]
        code = payload["error"].get("code")
    except (orjson.JSONDecodeError, KeyError, TypeError):
        message, code = err.reason, None
    text = f"{method} {path} failed: HTTP {err.code}" + (f" {code}" if code else "") + f": {message}"
    if err.code == 401:
        text += (
            "\nhint: pass an admin or read-only key with --api-key or FERRO_API_KEY"
            if not had_key
            else "\nhint: the key is unknown, revoked or expired"
        )
    elif err.code == 403:
        text += "\nhint: this key lacks the scope; changes need an 'admin' key"
    return text


# ---------------------------------------------------------------- output


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, list):
        return ",".join(str(v) for v in value) or "-"
    if isinstance(value, dict):
        return orjson.dumps(value).decode()
    return str(value)


def render(args: argparse.Namespace, data: Any, columns: list[str] | None = None) -> None:
    fmt = getattr(args, "format", None) or "table"
    if fmt == "json":
        print(orjson.dumps(data, option=orjson.OPT_INDENT_2).decode())
        return
    if fmt == "yaml":
        print(yaml.safe_dump(data, sort_keys=False, allow_unicode=True).rstrip())
        return
    rows = data.get("data") if isinstance(data, dict) and isinstance(data.get("data"), list) else None
    if rows is not None and columns:
        table = [columns] + [[_cell(r.get(c)) for c in columns] for r in rows]
        widths = [max(len(row[i]) for row in table) for i in range(len(columns))]
        for row in table:
            print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
        if not rows:
            print("(none)")
        return
    if isinstance(data, dict):
        width = max((len(k) for k in data), default=0)
        for k, v in data.items():
            print(f"{k.ljust(width)}  {_cell(v)}")
        return
    print(_cell(data))


# ---------------------------------------------------------------- commands

KEY_COLUMNS = ["id", "name", "prefix", "scopes", "status", "usage_count", "last_used_at", "expires_at"]
LOG_COLUMNS = ["ts", "id", "key_id", "provider", "model", "status", "total_tokens", "latency_ms", "error"]


def _csv(value: str | None) -> list[str] | None:
    return [v.strip() for v in value.split(",") if v.strip()] if value else None


def keys_list(args: argparse.Namespace) -> None:
    render(args, request(args, "GET", "/admin/keys"), KEY_COLUMNS)


def keys_get(args: argparse.Namespace) -> None:
    render(args, request(args, "GET", f"/admin/keys/{args.id}"))


def keys_create(args: argparse.Namespace) -> None:
    body: dict[str, Any] = {"name": args.name, "scopes": _csv(args.scopes) or ["proxy"]}
    if args.expires_in is not None:
        body["expires_in"] = args.expires_in
    if args.expires_at:
        body["expires_at"] = args.expires_at
    if args.allowed_models:
        body["allowed_models"] = _csv(args.allowed_models)
    for field, value in (("rpm_limit", args.rpm), ("tpm_limit", args.tpm), ("budget_usd", args.budget)):
        if value is not None:
            body[field] = value
    created = request(args, "POST", "/admin/keys", body)
    render(args, created)
    if (getattr(args, "format", None) or "table") == "table":
        print("\nStore the key now: it is shown only once.", file=sys.stderr)


def keys_action(action: str):
    def run(args: argparse.Namespace) -> None:
        method, suffix = {
            "revoke": ("POST", "/revoke"),
            "rotate": ("POST", "/rotate"),
            "delete": ("DELETE", ""),
        }[action]
        render(args, request(args, method, f"/admin/keys/{args.id}{suffix}"))

    return run


def keys_usage(args: argparse.Namespace) -> None:
    render(
        args,
        request(args, "GET", "/admin/keys/usage", query={"sort": args.sort, "limit": args.limit}),
        KEY_COLUMNS,
    )


def config_get(args: argparse.Namespace) -> None:
    data = request(args, "GET", "/admin/config")
    fmt = getattr(args, "format", None) or "table"
    if fmt == "table":  # the config itself reads best as YAML
        print(f"# version {data.get('version')} by {data.get('actor')} at {data.get('created_at')}")
        print(yaml.safe_dump(data.get("config"), sort_keys=False).rstrip())
        return
    render(args, data)


def config_history(args: argparse.Namespace) -> None:
    data = request(
        args, "GET", "/admin/config/history", query={"limit": args.limit, "include_config": "false"}
    )
    render(args, data, ["version", "created_at", "actor", "source", "rolled_back_from", "digest"])


def config_set(args: argparse.Namespace) -> None:
    path = Path(args.file)
    try:
        text = path.read_text()
    except OSError as exc:
        raise CliError(f"cannot read {path}: {exc.strerror}") from None
    try:
        document = orjson.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (orjson.JSONDecodeError, yaml.YAMLError) as exc:
        raise CliError(f"{path} is not valid {'JSON' if path.suffix == '.json' else 'YAML'}: {exc}") from None
    data = request(args, "POST", "/admin/config", document if document is not None else {})
    render(args, {k: v for k, v in data.items() if k != "config"})


def config_rollback(args: argparse.Namespace) -> None:
    data = request(args, "POST", f"/admin/config/rollback/{args.version}")
    render(args, {k: v for k, v in data.items() if k != "config"})


def _log_filters(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "model": args.model,
        "provider": args.provider,
        "key": args.key,
        "status": args.status,
        "since": args.since,
        "until": args.until,
    }


def logs_list(args: argparse.Namespace) -> None:
    query = {**_log_filters(args), "limit": args.limit, "offset": args.offset}
    render(args, request(args, "GET", "/admin/logs", query=query), LOG_COLUMNS)


def logs_stats(args: argparse.Namespace) -> None:
    data = request(args, "GET", "/admin/logs/stats", query=_log_filters(args))
    fmt = getattr(args, "format", None) or "table"
    if fmt != "table":
        render(args, data)
        return
    lat = data["latency_ms"]
    print(f"requests      {data['total_requests']}")
    print(f"errors        {data['errors']} ({data['error_rate'] * 100:.1f}%)")
    print(
        f"tokens        {data['tokens']['total']} (prompt {data['tokens']['prompt']}, "
        f"completion {data['tokens']['completion']})"
    )
    print(f"cost_usd      {data['cost_usd']}")
    print(f"latency_ms    p50 {_cell(lat['p50'])}  p95 {_cell(lat['p95'])}  p99 {_cell(lat['p99'])}")
    print(f"rps (1 min)   {data['requests_per_second_last_minute']}")
    for group in ("by_provider", "by_model"):
        if data[group]:
            print()
            name = group.removeprefix("by_")
            render(
                args,
                {"data": data[group]},
                [name, "requests", "errors", "tokens", "cost_usd", "latency_p95_ms"],
            )


def providers_list(args: argparse.Namespace) -> None:
    render(
        args,
        request(args, "GET", "/admin/providers"),
        ["name", "display", "base_url", "key_configured", "circuit"],
    )


def health(args: argparse.Namespace) -> None:
    render(args, request(args, "GET", "/admin/health"))


def plugins(args: argparse.Namespace) -> None:
    from ferro_proxy.chain import FILTERS, load_builtin_filters

    load_builtin_filters()
    data = {
        "data": [
            {"name": name, "type": cls.type, "description": cls.description}
            for name, cls in sorted(FILTERS.items())
            if cls.type != "router"
        ]
    }
    render(args, data, ["name", "type", "description"])


# ---------------------------------------------------------------- parser


def _common(default: Any) -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--gateway-url",
        default=default,
        help=f"admin listener URL (env FERRO_ADMIN_URL, default {DEFAULT_URL})",
    )
    common.add_argument("--api-key", default=default, help="admin or read-only key (env FERRO_API_KEY)")
    common.add_argument("--format", default=default, choices=("table", "json", "yaml"), help="output format")
    return common


def _run(fn):
    def wrapped(args: argparse.Namespace) -> int:
        try:
            fn(args)
        except CliError as err:
            print(f"ferro-proxy: {err}", file=sys.stderr)
            return err.exit_code
        return 0

    return wrapped


def _log_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model")
    parser.add_argument("--provider")
    parser.add_argument("--key", help="a key id")
    parser.add_argument("--status", help="a status code, 4xx, 5xx, error or ok")
    parser.add_argument("--since", help="RFC 3339, epoch seconds, or an age like 15m / 24h")
    parser.add_argument("--until")


def add_commands(sub: argparse._SubParsersAction) -> None:
    leaf = _common(argparse.SUPPRESS)  # flags accepted after the sub-command too

    plug = sub.add_parser("plugins", help="list the filters this build knows", parents=[leaf])
    plug.set_defaults(func=_run(plugins))

    admin = sub.add_parser(
        "admin", help="manage a running gateway through its admin API", parents=[_common(None)]
    )
    groups = admin.add_subparsers(dest="admin_group", required=True)

    keys = groups.add_parser("keys", help="gateway keys").add_subparsers(dest="action", required=True)
    keys.add_parser("list", parents=[leaf]).set_defaults(func=_run(keys_list))
    p = keys.add_parser("get", parents=[leaf])
    p.add_argument("id")
    p.set_defaults(func=_run(keys_get))
    p = keys.add_parser("create", parents=[leaf], help="create a key (the secret is printed once)")
    p.add_argument("--name", required=True)
    p.add_argument("--scopes", help="comma-separated: proxy, read_only, admin (default proxy)")
    p.add_argument("--expires-in", type=float, help="seconds until it expires")
    p.add_argument("--expires-at", help="RFC 3339 time it expires")
    p.add_argument("--allowed-models", help="comma-separated model names or patterns (gpt-4o*)")
    p.add_argument("--rpm", type=int, help="requests per minute for the rate-limit filter")
    p.add_argument("--tpm", type=int, help="tokens per minute for the rate-limit filter")
    p.add_argument("--budget", type=float, help="USD budget for the budget filter")
    p.set_defaults(func=_run(keys_create))
    for action in ("revoke", "rotate", "delete"):
        p = keys.add_parser(action, parents=[leaf])
        p.add_argument("id")
        p.set_defaults(func=_run(keys_action(action)))
    p = keys.add_parser("usage", parents=[leaf])
    p.add_argument("--sort", choices=("usage", "last_used"), default="usage")
    p.add_argument("--limit", type=int, default=20)
    p.set_defaults(func=_run(keys_usage))

    config = groups.add_parser("config", help="config versions").add_subparsers(dest="action", required=True)
    config.add_parser("get", parents=[leaf], help="the running config (secrets redacted)").set_defaults(
        func=_run(config_get)
    )
    p = config.add_parser("history", parents=[leaf])
    p.add_argument("--limit", type=int, default=20)
    p.set_defaults(func=_run(config_history))
    p = config.add_parser("set", parents=[leaf], help="replace the config with a YAML or JSON file")
    p.add_argument("file")
    p.set_defaults(func=_run(config_set))
    p = config.add_parser("rollback", parents=[leaf], help="make an old version current again")
    p.add_argument("version", type=int)
    p.set_defaults(func=_run(config_rollback))

    logs = groups.add_parser("logs", help="request logs").add_subparsers(dest="action", required=True)
    p = logs.add_parser("list", parents=[leaf])
    _log_flags(p)
    p.add_argument("--limit", type=int, default=50)
    p.add_argument("--offset", type=int, default=0)
    p.set_defaults(func=_run(logs_list))
    p = logs.add_parser("stats", parents=[leaf])
    _log_flags(p)
    p.set_defaults(func=_run(logs_stats))

    providers = groups.add_parser("providers", help="configured providers").add_subparsers(
        dest="action", required=True
    )
    providers.add_parser("list", parents=[leaf]).set_defaults(func=_run(providers_list))
    groups.add_parser("health", parents=[leaf], help="the gateway's deep health").set_defaults(
        func=_run(health)
    )


if add_commands not in SUBCOMMANDS:
    SUBCOMMANDS.append(add_commands)
