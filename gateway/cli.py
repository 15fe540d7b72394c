"""The `farebox` command."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from gateway import __version__

EXAMPLES = Path(__file__).resolve().parent.parent / "policies"

DESCRIPTION = """\
Farebox: a pay-per-use gateway for public services. It sits in front of an
existing service, proxies free routes, and answers priced ones with
402 Payment Required until they are paid in BSV.
"""

SERVE_EPILOG = """\
Every option can also come from the environment (FAREBOX_PORT, FAREBOX_POLICIES,
FAREBOX_KEY_FILE, ...) or from a YAML config file (--config, FAREBOX_CONFIG) with
the same names in snake_case; flags win over the environment, which wins over
the file. The server key can be given directly as FAREBOX_KEY (hex or WIF).

Signals: SIGHUP reloads the policy (so does saving a policy file); SIGTERM
drains in-flight requests and stops.
"""


def main(argv: list[str] | None = None) -> None:
    parser = _parser()
    args = parser.parse_args(argv)
    if not hasattr(args, "run"):
        parser.print_help()
        raise SystemExit(2)
    args.run(args)


def _parser() -> argparse.ArgumentParser:
    fmt = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(prog="farebox", description=DESCRIPTION, formatter_class=fmt)
    parser.add_argument("--version", action="version", version=f"farebox {__version__}")
    sub = parser.add_subparsers(title="commands", metavar="COMMAND")

    serve = sub.add_parser(
        "serve",
        help="run the gateway",
        description="Run the gateway.",
        epilog=SERVE_EPILOG,
        formatter_class=fmt,
    )
    serve.add_argument("--config", type=Path, metavar="FILE", help="YAML settings file")
    serve.add_argument("--host", help="address to listen on (default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port to listen on (default 8402)")
    serve.add_argument(
        "--workers", type=int, metavar="N", help="worker processes sharing the port (default 1)"
    )
    serve.add_argument(
        "--policies",
        type=Path,
        metavar="PATH",
        help="policy directory or file (default ./policies)",
    )
    serve.add_argument("--key-file", type=Path, metavar="FILE", help="server identity key file")
    serve.add_argument(
        "--connect-timeout", metavar="DURATION", help="upstream connect timeout (default 5s)"
    )
    serve.add_argument(
        "--read-timeout", metavar="DURATION", help="upstream read timeout (default 60s)"
    )
    serve.add_argument(
        "--upstream-connections",
        type=int,
        metavar="N",
        help="upstream pool size per worker (default 256)",
    )
    serve.add_argument(
        "--no-watch",
        dest="watch",
        action="store_const",
        const=False,
        help="do not reload policies when files change",
    )
    serve.add_argument("--access-log", action="store_const", const=True, help="log every request")
    serve.add_argument("--log-level", choices=["debug", "info", "warning", "error"])
    serve.add_argument(
        "--store",
        metavar="URL",
        help="shared state: memory (default, one process) or redis://, rediss://, "
        "redis+sentinel://, redis+cluster:// URL",
    )
    fiat = serve.add_argument_group("fiat prices (policy prices in usd_cents or eur_cents)")
    fiat.add_argument(
        "--rate-usd", type=float, metavar="USD", help="fixed rate: US dollars per BSV"
    )
    fiat.add_argument("--rate-eur", type=float, metavar="EUR", help="fixed rate: euros per BSV")
    fiat.add_argument(
        "--rate-feed",
        metavar="URL",
        help='JSON feed of rates per BSV, e.g. {"USD": 41.2, "EUR": 38.0}',
    )
    fiat.add_argument(
        "--rate-max-age",
        metavar="DURATION",
        help="refuse fiat prices when the feed's rate is older (default 5m)",
    )
    pay = serve.add_argument_group("payments (without a chain, priced routes only ever answer 402)")
    pay.add_argument(
        "--devnet-url", metavar="URL", help="take payments on a devnet (farebox devnet)"
    )
    pay.add_argument("--arc-url", metavar="URL", help="broadcast payments through this ARC")
    pay.add_argument(
        "--headers-url", metavar="URL", help="Block Headers Service that proves merkle roots"
    )
    pay.add_argument(
        "--token-keys",
        type=Path,
        metavar="DIR",
        help="token signing keys, created if empty (default ./token-keys)",
    )
    pay.add_argument(
        "--payment-window",
        metavar="DURATION",
        help="how far x-bsv-time may be from now (default 30s)",
    )
    pay.add_argument(
        "--insecure-cookies",
        dest="cookie_secure",
        action="store_const",
        const=False,
        help="send grant cookies over plain http too",
    )
    ops = serve.add_argument_group("operations")
    ops.add_argument(
        "--trusted-proxies",
        metavar="CIDRS",
        help="comma-separated addresses or networks of proxies in front (nginx) whose "
        "X-Forwarded-For/-Proto/-Host are believed (default: none)",
    )
    ops.add_argument(
        "--admin-port",
        type=int,
        metavar="PORT",
        help="admin API and /metrics listener port (default 9402; only with a token)",
    )
    ops.add_argument(
        "--admin-host", metavar="ADDR", help="admin listener address (default 127.0.0.1)"
    )
    ops.add_argument(
        "--admin-token-file",
        type=Path,
        metavar="FILE",
        help="file holding the admin API's bearer token (or FAREBOX_ADMIN_TOKEN); "
        "without one the admin listener stays off",
    )
    ops.add_argument(
        "--log-format",
        choices=("text", "json"),
        help="log lines as text (default) or one JSON object per line",
    )
    page = serve.add_argument_group("paywall page (browsers)")
    page.add_argument(
        "--watch-url",
        metavar="URL",
        help="a WhatsOnChain-style API to find payments wallets broadcast themselves "
        "(e.g. https://api.whatsonchain.com; with --devnet-url the devnet is asked)",
    )
    page.add_argument(
        "--watch-network", metavar="NAME", help="the API's network: main or test (default main)"
    )
    page.add_argument(
        "--wallet-url",
        metavar="URL",
        help="where the page looks for a BRC-100 browser wallet (default http://localhost:3321)",
    )
    serve.set_defaults(run=_serve)

    demo = sub.add_parser(
        "demo",
        help="run a self-contained demo with sample public services",
        description="Start the gateway with the example policies in front of a bundled sample "
        "upstream (records archive, open-data API, utility meter). Needs no configuration; "
        "uses a throw-away server key.",
    )
    demo.add_argument(
        "--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)"
    )
    demo.add_argument("--port", type=int, default=8402, help="gateway port (default 8402)")
    demo.set_defaults(run=_demo)

    devnet = sub.add_parser(
        "devnet",
        help="run a local BSV development chain",
        description="Run a local BSV development chain (like regtest) with an ARC-compatible "
        "API (POST /v1/tx, GET /v1/tx/{txid}), block headers, merkle-root checks and a faucet "
        "(POST /faucet). Point a gateway at it with --devnet-url.",
    )
    devnet.add_argument(
        "--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)"
    )
    devnet.add_argument("--port", type=int, default=8404, help="port (default 8404)")
    devnet.add_argument(
        "--block-interval",
        type=float,
        default=10.0,
        metavar="SECONDS",
        help="mine pending transactions this often; 0 = only on POST /mine (default 10)",
    )
    devnet.set_defaults(run=_devnet)

    policy = sub.add_parser(
        "policy", help="work with policy files", description="Work with policy files."
    )
    psub = policy.add_subparsers(title="commands", metavar="COMMAND", required=True)
    check = psub.add_parser(
        "check",
        help="validate policy files",
        description="Validate policy files; print every problem as FILE:LINE: KEY: MESSAGE and exit 1 if there is any.",
    )
    check.add_argument(
        "path",
        nargs="?",
        type=Path,
        default=Path("policies"),
        help="directory or file (default ./policies)",
    )
    check.set_defaults(run=_policy_check)

    from gateway.client.cli import register as register_client

    register_client(sub)

    keys = sub.add_parser(
        "keys", help="manage the server identity key", description="Manage the server identity key."
    )
    ksub = keys.add_subparsers(title="commands", metavar="COMMAND", required=True)
    gen = ksub.add_parser(
        "generate",
        help="create a new key file (mode 0600)",
        description="Create a new server identity key in FILE, readable by its owner only, "
        "and print its public key. The key can spend what clients pay: keep it secret.",
    )
    gen.add_argument(
        "--out",
        type=Path,
        default=Path("farebox.key"),
        metavar="FILE",
        help="where to write it (default ./farebox.key)",
    )
    gen.add_argument("--force", action="store_true", help="replace an existing file")
    gen.set_defaults(run=_keys_generate)
    show = ksub.add_parser(
        "show-public",
        help="print the public key of a key file",
        description="Print the public key (compressed, hex) that clients see as x-bsv-server.",
    )
    show.add_argument(
        "--key-file",
        type=Path,
        default=None,
        metavar="FILE",
        help="key file (default $FAREBOX_KEY, else ./farebox.key)",
    )
    show.set_defaults(run=_keys_show)
    return parser


def _serve(args: argparse.Namespace) -> None:
    from gateway.config import ConfigError, load_settings
    from gateway.server import serve

    names = (
        "host", "port", "workers", "policies", "key_file", "connect_timeout", "read_timeout",
        "upstream_connections", "watch", "access_log", "log_level", "devnet_url", "arc_url",
        "headers_url", "token_keys", "payment_window", "cookie_secure", "store", "rate_usd",
        "rate_eur", "rate_feed", "rate_max_age", "watch_url", "watch_network", "wallet_url",
        "trusted_proxies", "admin_port", "admin_host", "admin_token_file", "log_format",
    )  # fmt: skip
    flags: dict[str, Any] = {n: getattr(args, n) for n in names}
    try:
        settings = load_settings(args.config, flags)
    except ConfigError as exc:
        raise SystemExit(f"farebox: {exc}") from None
    serve(settings)


def _demo(args: argparse.Namespace) -> None:
    from gateway.demo.run import run_demo

    run_demo(args.host, args.port, EXAMPLES)


def _devnet(args: argparse.Namespace) -> None:
    from gateway.devnet.http import main as devnet_main

    devnet_main(
        [
            "--host",
            args.host,
            "--port",
            str(args.port),
            "--block-interval",
            str(args.block_interval),
        ]
    )


def _policy_check(args: argparse.Namespace) -> None:
    from gateway.policy import PolicyError, load_policy

    try:
        policy = load_policy(args.path)
    except PolicyError as exc:
        for issue in exc.issues:
            print(issue, file=sys.stderr)
        count = len(exc.issues)
        print(
            f"{count} problem{'s' if count != 1 else ''} found; policy not valid", file=sys.stderr
        )
        raise SystemExit(1) from None
    routes = sum(len(s.routes) for s in policy.services)
    print(
        f"ok: {len(policy.sources)} file(s), {len(policy.services)} service(s), "
        f"{routes} route(s), version {policy.version}"
    )


def _keys_generate(args: argparse.Namespace) -> None:
    from gateway import keys

    try:
        key = keys.generate(args.out, force=args.force)
    except (keys.KeyFileError, OSError) as exc:
        raise SystemExit(f"farebox: {exc}") from None
    print(f"wrote {args.out} (mode 0600)")
    print(f"public key: {key.public_key().hex()}")


def _keys_show(args: argparse.Namespace) -> None:
    import os

    from gateway import keys

    path = args.key_file or (None if os.environ.get(keys.ENV_KEY) else Path("farebox.key"))
    try:
        key = keys.load(path)
    except keys.KeyFileError as exc:
        raise SystemExit(f"farebox: {exc}") from None
    print(key.public_key().hex())


if __name__ == "__main__":
    main()
