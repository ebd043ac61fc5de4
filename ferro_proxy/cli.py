"""The `ferro-proxy` command line."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Callable, Coroutine
from typing import Any

from ferro_proxy import __version__
from ferro_proxy.config import ConfigError, GatewayConfig, load_config

# Other parts add sub-commands: fn(subparsers) registering a parser with set_defaults(func=...)
SUBCOMMANDS: list[Callable[[argparse._SubParsersAction], None]] = []


def _load(path: str | None) -> GatewayConfig:
    return load_config(path) if path else GatewayConfig()


def run_event_loop(main: Coroutine[Any, Any, int]) -> int:
    """Run on uvloop where it is installed (the default on Linux/macOS): it roughly halves
    the gateway's CPU per request. FERRO_EVENT_LOOP=asyncio forces the standard loop."""
    if os.environ.get("FERRO_EVENT_LOOP", "uvloop") == "uvloop":
        try:
            import uvloop
        except ImportError:
            pass
        else:
            return uvloop.run(main)
    return asyncio.run(main)


def cmd_serve(args: argparse.Namespace) -> int:
    from ferro_proxy.jsonlog import setup_logging
    from ferro_proxy.server import serve_forever

    setup_logging(os.environ.get("LOG_LEVEL", "info"))
    path = args.config or os.environ.get("GATEWAY_CONFIG") or None
    try:
        config = _load(path)
        return run_event_loop(
            serve_forever(
                config,
                listen=args.listen or os.environ.get("FERRO_LISTEN") or "127.0.0.1:8080",
                admin_listen=args.admin_listen or os.environ.get("FERRO_ADMIN_LISTEN") or "127.0.0.1:8081",
                drain_seconds=args.drain_seconds,
                config_source=path,
            )
        )
    except ConfigError as exc:
        print(f"ferro-proxy: invalid config{f' {exc.source}' if exc.source else ''}:", file=sys.stderr)
        for line in exc.errors:
            print(f"  - {line}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"ferro-proxy: cannot listen: {exc}", file=sys.stderr)
        return 1


def cmd_validate(args: argparse.Namespace) -> int:
    from ferro_proxy.validate import validate_file

    errors = validate_file(args.file)
    if errors:
        print(f"{args.file}: {len(errors)} error(s)")
        for line in errors:
            print(f"  - {line}")
        return 1
    print(f"{args.file}: ok")
    return 0


def cmd_schema(args: argparse.Namespace) -> int:
    from ferro_proxy.config_schema import config_schema_text

    text = config_schema_text()
    if args.output:
        with open(args.output, "w", encoding="utf-8") as out:
            out.write(text)
    else:
        sys.stdout.write(text)
    return 0


def cmd_version(args: argparse.Namespace) -> int:
    print(f"ferro-proxy {__version__} (python {sys.version.split()[0]})")
    return 0


def cmd_inject_webhook(args: argparse.Namespace) -> int:
    from ferro_proxy.k8s.webhook import run

    return run(args.listen, args.tls_cert, args.tls_key, args.settings)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ferro-proxy", description="OpenAI-compatible AI gateway sidecar")
    parser.add_argument("--version", action="version", version=f"ferro-proxy {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the gateway")
    serve.add_argument("--config", help="YAML or JSON config file (env GATEWAY_CONFIG)")
    serve.add_argument("--listen", help="proxy listener HOST:PORT (env FERRO_LISTEN, default 127.0.0.1:8080)")
    serve.add_argument(
        "--admin-listen", help="admin listener HOST:PORT (env FERRO_ADMIN_LISTEN, default 127.0.0.1:8081)"
    )
    serve.add_argument(
        "--drain-seconds",
        type=float,
        default=float(os.environ.get("FERRO_DRAIN_SECONDS", "20")),
        help="on SIGTERM, how long in-flight requests may take to finish (default 20)",
    )
    serve.set_defaults(func=cmd_serve)

    validate = sub.add_parser("validate", help="check a config file and list every error")
    validate.add_argument("file")
    validate.set_defaults(func=cmd_validate)

    schema = sub.add_parser("schema", help="print the config's JSON Schema (for editor autocompletion)")
    schema.add_argument("--output", "-o", help="write to this file instead of stdout")
    schema.set_defaults(func=cmd_schema)

    version = sub.add_parser("version", help="print the version")
    version.set_defaults(func=cmd_version)

    import ferro_proxy.admin_cli  # noqa: F401  (registers `admin` and `plugins`)
    import ferro_proxy.intercept.cli  # noqa: F401  (registers `ca` and `intercept-rules`)

    webhook = sub.add_parser("inject-webhook", help="run the Kubernetes sidecar injector (mutating webhook)")
    webhook.add_argument("--listen", default="0.0.0.0:8443", help="HOST:PORT (default 0.0.0.0:8443)")
    webhook.add_argument("--tls-cert", help="PEM certificate the API server trusts")
    webhook.add_argument("--tls-key", help="PEM private key of --tls-cert")
    webhook.add_argument("--settings", help="injector settings YAML (image, config map, resources ...)")
    webhook.set_defaults(func=cmd_inject_webhook)

    for add in SUBCOMMANDS:
        add(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)
