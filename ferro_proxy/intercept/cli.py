"""`ferro-proxy ca init|export` and `ferro-proxy intercept-rules`."""

from __future__ import annotations

import argparse
import sys

from ferro_proxy.cli import SUBCOMMANDS
from ferro_proxy.config import ConfigError, GatewayConfig, load_config


def _intercept_settings(path: str | None):
    return (load_config(path) if path else GatewayConfig()).intercept


def cmd_ca(args: argparse.Namespace) -> int:
    from ferro_proxy.intercept.ca import (
        CA_CERT_FILE,
        CAError,
        CertificateAuthority,
        default_ca_dir,
        init_ca_dir,
    )

    try:
        settings = _intercept_settings(args.config)
        ca_dir = args.ca_dir or settings.ca_dir or str(default_ca_dir())
        if args.action == "init":
            directory = init_ca_dir(ca_dir, force=args.force)
            print(f"created a CA in {directory} ({CA_CERT_FILE} to trust, key readable by you only)")
            return 0
        ca = CertificateAuthority.load_or_create(
            None if settings.ca_cert else ca_dir, settings.ca_cert, settings.ca_key
        )
    except (CAError, ConfigError) as exc:
        print(f"ferro-proxy ca: {exc}", file=sys.stderr)
        return 1
    sys.stdout.buffer.write(ca.cert_pem)
    return 0


def cmd_rules(args: argparse.Namespace) -> int:
    from ferro_proxy.intercept.rules import build_rules

    try:
        settings = _intercept_settings(args.config)
    except ConfigError as exc:
        print(f"ferro-proxy intercept-rules: {exc}", file=sys.stderr)
        return 1
    overrides: dict[str, list[str]] = {}
    for item in args.address or []:
        host, sep, addr = item.partition("=")
        if not sep or not addr:
            print(f"ferro-proxy intercept-rules: --address expects HOST=IP, got {item!r}", file=sys.stderr)
            return 2
        overrides.setdefault(host.lower(), []).append(addr)
    try:
        lines = build_rules(
            settings,
            redirect_port=args.redirect_port,
            gateway_uid=args.uid,
            ports=args.ports,
            all_destinations=args.all_destinations,
            addresses=overrides,
            resolve=not args.no_resolve,
        )
    except ValueError as exc:
        print(f"ferro-proxy intercept-rules: {exc}", file=sys.stderr)
        return 2
    print("\n".join(lines))
    return 0


def add_commands(sub: argparse._SubParsersAction) -> None:
    ca = sub.add_parser("ca", help="create or print the interception CA")
    ca.add_argument(
        "action", choices=["init", "export"], help="init: create it; export: print its certificate"
    )
    ca.add_argument("--ca-dir", help="directory of ca.pem / ca-key.pem (default: intercept.ca_dir)")
    ca.add_argument("--config", help="config file whose intercept: section names the CA")
    ca.add_argument("--force", action="store_true", help="init: replace an existing CA")
    ca.set_defaults(func=cmd_ca)

    rules = sub.add_parser(
        "intercept-rules", help="print the iptables rules that redirect provider traffic (transparent mode)"
    )
    rules.add_argument("--config", help="config file (its intercept.hosts and transparent_listen)")
    rules.add_argument(
        "--redirect-port", type=int, help="the transparent listener's port (default: from transparent_listen)"
    )
    rules.add_argument(
        "--uid", type=int, default=10001, help="the gateway's user id, never redirected (10001)"
    )
    rules.add_argument(
        "--ports", type=int, nargs="+", default=[443], help="destination ports to redirect (default 443)"
    )
    rules.add_argument(
        "--all-destinations",
        action="store_true",
        help="redirect every destination on those ports (SNI decides); no DNS needed",
    )
    rules.add_argument(
        "--address", action="append", help="HOST=IP to use instead of resolving HOST (repeatable)"
    )
    rules.add_argument("--no-resolve", action="store_true", help="do not resolve host names (only --address)")
    rules.set_defaults(func=cmd_rules)


SUBCOMMANDS.append(add_commands)
