"""The `farebox` command."""

from __future__ import annotations

import argparse
import os
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

ROTATE_DESCRIPTION = """\
Add a new token signing key to the ring in DIR; it signs once each gateway
reads the ring again (SIGHUP, or a restart). Older keys stay in the ring
(and the JWKS) and keep verifying the tokens they signed. With --prune,
keys retired longer ago than --older-than are deleted; the active key
never is.

With --identity, write a new server identity key to --key-file and keep the
old one as FILE.previous (mode 0600): what was paid to the old key must be
swept with --key-file FILE.previous.
"""

ROTATE_EPILOG = """\
Running gateways read the token keys at start-up and on SIGHUP: after a
rotation send SIGHUP to each gateway's main process (kill -HUP PID; under
systemd `systemctl kill -s HUP UNIT`, in a container `docker kill -s HUP
NAME`; it passes the signal to its workers), no restart needed. A new
identity key (--identity) needs a restart. A token names its key (kid);
the JWKS at /.well-known/jwks.json lists every key in the ring.
"""

SWEEP_DESCRIPTION = """\
Spend every unspent output the receipts lead to into ADDRESS: derive each
output's key from the server key and the receipt's derivation data, ask the
chain which outputs are unspent, and broadcast P2PKH transactions paying all
but the fee to ADDRESS.
"""

SWEEP_EPILOG = """\
Which outputs are unspent is asked of the chain (a WhatsOnChain-style API:
the devnet, or --watch-url), never of a local record: a sweep run twice
sweeps nothing the second time, and an interrupted one is just run again.
Exit status: 0 when everything found was swept (or there was nothing to
sweep), 1 when the sweep was refused or a transaction was not taken.
"""

REFUNDS_DESCRIPTION = """\
List the checkout payments Farebox took no money for, or whose grant nobody
collected: paid after the checkout expired, paid too little, paid a second
time, paid for what is no longer for sale, or already in a block when found.
Each line says what was paid (txid, satoshis, the price), to which checkout,
when, why it is listed and whether it was settled (the grant reached the page
after all, or the admin refunded or honoured it: POST /refunds/settle on the
admin API). Their outputs are swept with the rest (farebox sweep).
"""


def main(argv: list[str] | None = None) -> None:
    parser = _parser()
    args = parser.parse_args(argv)
    if not hasattr(args, "run"):
        parser.print_help()
        raise SystemExit(2)
    try:
        args.run(args)
        sys.stdout.flush()
    except BrokenPipeError:
        # `farebox payouts status | head` ends quietly, as Unix tools do. Not by
        # restoring SIGPIPE's default: that is process-wide, and a process that
        # also serves sockets (or a test run) would die of a client's hang-up.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        raise SystemExit(141) from None


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
    serve.add_argument(
        "--key-file",
        type=Path,
        metavar="FILE",
        help="server identity key file (default $FAREBOX_KEY_FILE, else ./farebox.key; "
        "$FAREBOX_KEY, the key itself, overrides both)",
    )
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
    serve.add_argument(
        "--access-log",
        action="store_const",
        const=True,
        help="log one line per request, whatever --log-level says",
    )
    serve.add_argument(
        "--log-level",
        choices=["debug", "info", "warning", "error"],
        help="how much to log besides the access log (default info)",
    )
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
        "--receipts-file",
        type=Path,
        metavar="FILE",
        help="append every receipt here as a JSON line, mode 0600: what `farebox sweep "
        "--receipts` reads to spend payments (default ./receipts.jsonl)",
    )
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
    page.add_argument(
        "--checkout-grace",
        metavar="DURATION",
        help="how long after a checkout expires a payment to it is still looked for and "
        "recorded (default 24h)",
    )
    auth = serve.add_argument_group("authenticated clients (BRC-103/104, e.g. AuthFetch)")
    auth.add_argument(
        "--auth-session",
        metavar="DURATION",
        help="how long an authenticated session lasts before the client handshakes again "
        "(default 10m, at most 24h)",
    )
    auth.add_argument(
        "--auth-body-limit",
        metavar="BYTES",
        type=int,
        help="most bytes of an authenticated request's body, or of its answer, held in "
        "memory to be signed whole (default 8388608, at least 1024)",
    )
    x402 = serve.add_argument_group("x402 clients (PAYMENT-SIGNATURE, scheme exact)")
    x402.add_argument(
        "--x402-network",
        metavar="ID",
        help="the CAIP-2 network x402 clients are asked to pay on: bsv:mainnet (default), "
        "bsv:testnet, or bsv:<name> for a devnet; bip122 ids are refused",
    )
    payouts = serve.add_argument_group("payouts (rewards for taking part: reward: in a policy)")
    payouts.add_argument(
        "--payouts-wallet",
        type=Path,
        metavar="FILE",
        help="the treasury that pays rewards (a wallet file: farebox wallet new); give it to "
        "one instance only. Without it rewards are recorded owed and paid by an instance "
        "that has it",
    )
    payouts.add_argument(
        "--payouts-ledger",
        type=Path,
        metavar="FILE",
        help="where payouts are recorded with the memory store (SQLite, default ./payouts.db); "
        "with Redis they are in the shared store",
    )
    payouts.add_argument(
        "--payouts-interval",
        metavar="DURATION",
        help="pay what is owed at least this often (default 10s)",
    )
    payouts.add_argument(
        "--payouts-batch",
        type=int,
        metavar="N",
        help="payouts per transaction; a full batch goes out at once (default 100)",
    )
    payouts.add_argument(
        "--payouts-low-balance",
        type=int,
        metavar="SATOSHIS",
        help="warn when the treasury holds less than this",
    )
    serve.set_defaults(run=_serve)

    demo = sub.add_parser(
        "demo",
        help="run a self-contained demo with sample public services",
        description="Start the gateway with the example policies in front of a bundled sample "
        "upstream (records archive, open-data API, utility meter, transit fares, a public "
        "consultation). Needs no configuration; uses a throw-away server key.",
    )
    demo.add_argument(
        "--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)"
    )
    demo.add_argument("--port", type=int, default=8402, help="gateway port (default 8402)")
    demo.add_argument(
        "--upstream-port",
        type=int,
        default=8403,
        metavar="PORT",
        help="the sample upstream's port (default 8403, which the example policies name; "
        "another, or 0 for any free one, serves a copy of them naming it)",
    )
    demo.add_argument(
        "--devnet-port",
        type=int,
        default=8404,
        metavar="PORT",
        help="the devnet's port (default 8404, where `farebox wallet` looks; 0: any free one)",
    )
    demo.set_defaults(run=_demo)

    devnet = sub.add_parser(
        "devnet",
        help="run a local BSV development chain",
        description="Run a local BSV development chain (like regtest) with an ARC-compatible "
        "API (POST /v1/tx, GET /v1/tx/{txid}), block headers, merkle-root checks and a faucet "
        "(POST /faucet). Point a gateway at it with --devnet-url.",
    )
    from gateway.devnet.options import add_arguments as devnet_arguments

    devnet_arguments(devnet)
    devnet.set_defaults(run=_devnet)

    policy = sub.add_parser(
        "policy", help="work with policy files", description="Work with policy files."
    )
    psub = policy.add_subparsers(title="commands", metavar="COMMAND", required=True)
    check = psub.add_parser(
        "check",
        help="validate policy files",
        description="Validate policy files; print every problem as FILE:LINE:COLUMN: KEY: "
        "MESSAGE, in file and line order, and exit 1 if there is any.",
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
    from gateway.payouts.cli import register as register_payouts

    register_payouts(sub)

    keys = sub.add_parser(
        "keys",
        help="manage the server identity key and the token signing keys",
        description="Manage the server identity key and the token signing keys.",
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
        help="key file (default ./farebox.key; $FAREBOX_KEY, the key itself, overrides it)",
    )
    show.set_defaults(run=_keys_show)
    rotate = ksub.add_parser(
        "rotate",
        help="add a new token signing key (or, with --identity, replace the server key)",
        description=ROTATE_DESCRIPTION,
        epilog=ROTATE_EPILOG,
        formatter_class=fmt,
    )
    rotate.add_argument(
        "--token-keys",
        type=Path,
        metavar="DIR",
        help="the token signing key ring (default $FAREBOX_TOKEN_KEYS, else ./token-keys)",
    )
    rotate.add_argument(
        "--prune",
        action="store_true",
        help="also delete keys retired longer ago than --older-than (never the active one)",
    )
    rotate.add_argument(
        "--older-than",
        default="90d",
        metavar="DURATION",
        help="how long a retired key keeps verifying: longer than any grant, tab or "
        "checkout lasts (default 90d)",
    )
    rotate.add_argument(
        "--identity",
        action="store_true",
        help="rotate the server identity key instead of the token keys",
    )
    rotate.add_argument(
        "--key-file",
        type=Path,
        metavar="FILE",
        help="with --identity: the server key file (default $FAREBOX_KEY_FILE)",
    )
    rotate.set_defaults(run=_keys_rotate)

    sweep = sub.add_parser(
        "sweep",
        help="move what clients paid to the server key on to a treasury address",
        description=SWEEP_DESCRIPTION,
        epilog=SWEEP_EPILOG,
        formatter_class=fmt,
    )
    sweep.add_argument("--to", required=True, metavar="ADDRESS", help="the treasury address")
    sweep.add_argument(
        "--key-file",
        type=Path,
        metavar="FILE",
        help="the server key (default: the settings' key_file or $FAREBOX_KEY, else ./farebox.key); "
        "FILE.previous after a rotation",
    )
    sweep.add_argument("--config", type=Path, metavar="FILE", help="the gateway's YAML settings")
    sweep.add_argument("--store", metavar="URL", help="the gateway's shared store (redis://...)")
    sweep.add_argument(
        "--receipts",
        type=Path,
        metavar="FILE",
        help="read receipts from FILE (one JSON receipt per line) instead of the store",
    )
    sweep.add_argument("--devnet-url", metavar="URL", help="sweep on a devnet (farebox devnet)")
    sweep.add_argument("--arc-url", metavar="URL", help="broadcast through this ARC")
    sweep.add_argument(
        "--watch-url",
        metavar="URL",
        help="WhatsOnChain-style API that says which outputs are unspent (needed with "
        "--arc-url; with --devnet-url the devnet is asked)",
    )
    sweep.add_argument("--watch-network", metavar="NAME", help="main or test (default main)")
    sweep.add_argument(
        "--since",
        metavar="WHEN",
        help="only receipts from then on: 8d, 2025-01-31, an ISO time or unix seconds "
        "(default: every receipt)",
    )
    sweep.add_argument(
        "--dry-run", action="store_true", help="build and sign, print, broadcast nothing"
    )
    sweep.add_argument(
        "--fee-rate",
        type=float,
        default=1.0,
        metavar="SAT/KB",
        help="fee in satoshis per 1000 bytes (default 1)",
    )
    sweep.add_argument(
        "--max-inputs",
        type=int,
        default=200,
        metavar="N",
        help="outputs spent per transaction at most (default 200)",
    )
    sweep.set_defaults(run=_sweep)

    refunds = sub.add_parser(
        "refunds",
        help="list checkout payments to refund or honour (paid late, too little, twice)",
        description=REFUNDS_DESCRIPTION,
        formatter_class=fmt,
    )
    refunds.add_argument("--config", type=Path, metavar="FILE", help="the gateway's YAML settings")
    refunds.add_argument("--store", metavar="URL", help="the gateway's shared store (redis://...)")
    refunds.add_argument(
        "--since",
        metavar="WHEN",
        help="only payments listed since: 8d, 2025-01-31, an ISO time or unix seconds",
    )
    refunds.add_argument(
        "--open", action="store_true", help="only those not settled yet (refunded, honoured)"
    )
    refunds.add_argument(
        "--format",
        choices=("text", "json", "csv"),
        default="text",
        help="a table (default), JSON lines, or CSV",
    )
    refunds.set_defaults(run=_refunds)
    return parser


def _serve(args: argparse.Namespace) -> None:
    from gateway.config import ConfigError, load_settings
    from gateway.serve.supervisor import serve

    names = (
        "host", "port", "workers", "policies", "key_file", "connect_timeout", "read_timeout",
        "upstream_connections", "watch", "access_log", "log_level", "devnet_url", "arc_url",
        "headers_url", "token_keys", "payment_window", "cookie_secure", "store", "rate_usd",
        "rate_eur", "rate_feed", "rate_max_age", "watch_url", "watch_network", "wallet_url",
        "trusted_proxies", "admin_port", "admin_host", "admin_token_file", "log_format",
        "receipts_file", "checkout_grace", "auth_session", "auth_body_limit", "x402_network",
        "payouts_wallet", "payouts_ledger", "payouts_interval", "payouts_batch",
        "payouts_low_balance",
    )  # fmt: skip
    flags: dict[str, Any] = {n: getattr(args, n) for n in names}
    try:
        settings = load_settings(args.config, flags)
    except ConfigError as exc:
        raise SystemExit(f"farebox: {exc}") from None
    serve(settings)


def _demo(args: argparse.Namespace) -> None:
    from gateway.demo.run import run_demo

    run_demo(args.host, args.port, EXAMPLES, args.upstream_port, args.devnet_port)


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
    for note in policy.notes:
        print(f"note: {note}")
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
    from gateway import keys

    path = args.key_file
    try:
        key = keys.load(path)
    except keys.KeyFileError as exc:
        raise SystemExit(f"farebox: {exc}") from None
    print(key.public_key().hex())


def _keys_rotate(args: argparse.Namespace) -> None:
    import os
    import time

    from gateway import keys
    from gateway.custody import rotate
    from gateway.policy.schema import parse_duration

    if args.identity:
        path = args.key_file or (
            Path(os.environ["FAREBOX_KEY_FILE"]) if os.environ.get("FAREBOX_KEY_FILE") else None
        )
        if path is None:
            raise SystemExit("farebox: --identity needs --key-file FILE")
        if os.environ.get(keys.ENV_KEY):
            raise SystemExit(
                f"farebox: ${keys.ENV_KEY} is set: the gateway takes its key from there, "
                f"not from {path}; put a new key there instead"
            )
        try:
            done = rotate.rotate_identity(path)
        except (keys.KeyFileError, OSError) as exc:
            raise SystemExit(f"farebox: {exc}") from None
        print(f"wrote a new server key to {done.path} (mode 0600)")
        print(f"new public key: {done.new_public}")
        print(f"kept the old key as {done.previous} (mode 0600)")
        print(f"old public key: {done.old_public}")
        print(
            "Restart the gateways: clients then pay to the new key. Everything paid to the old\n"
            "key (every receipt until the restart) can only be spent with it. Sweep it with\n"
            f"  farebox sweep --key-file {done.previous} --to ADDRESS ...\n"
            f"and keep {done.previous} until such a sweep finds nothing left."
        )
        return

    folder = args.token_keys or Path(os.environ.get("FAREBOX_TOKEN_KEYS") or "token-keys")
    try:
        older_than = parse_duration(args.older_than)
    except ValueError as exc:
        raise SystemExit(f"farebox: --older-than: {exc}") from None
    try:
        kid = rotate.rotate_token_keys(folder)
        pruned = rotate.prune_token_keys(folder, older_than) if args.prune else []
        ring = rotate.ring_keys(folder)
    except (OSError, ValueError) as exc:
        raise SystemExit(f"farebox: cannot rotate the keys in {folder}: {exc}") from None

    def day(t: float) -> str:
        return time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(t))

    print(f"new signing key: {kid}")
    for key in pruned:
        assert key.retired is not None
        print(f"pruned: {key.kid} (retired {day(key.retired)})")
    print(f"keys in {folder}, newest first:")
    for key in reversed(ring):
        state = "active" if key.retired is None else f"verifies, retired {day(key.retired)}"
        print(f"  {key.kid}  {state}")
    print(
        "Send the gateways SIGHUP (or restart them) to sign with the new key; "
        "older tokens keep verifying."
    )


def _sweep(args: argparse.Namespace) -> None:
    import asyncio
    import time

    from gateway import keys
    from gateway.config import ConfigError, load_settings
    from gateway.custody import sweep as sw
    from gateway.custody.rotate import load_key_file

    names = ("store", "devnet_url", "arc_url", "watch_url", "watch_network")
    flags = {n: getattr(args, n) for n in names}
    # The settings insist on a headers service next to ARC (serve checks merkle
    # roots); a sweep checks none, so it needs none.
    flags["headers_url"] = "-"
    try:
        settings = load_settings(args.config, flags)
    except ConfigError as exc:
        raise SystemExit(f"farebox: {exc}") from None
    try:
        server = load_key_file(args.key_file) if args.key_file else keys.load(settings.key_file)
    except keys.KeyFileError as exc:
        raise SystemExit(f"farebox: {exc}") from None
    try:
        since = sw.parse_since(args.since, time.time()) if args.since else None
        network = None if settings.devnet_url else settings.watch_network
        sw.treasury_script(args.to, network)  # refuse a bad address before any I/O
    except sw.SweepError as exc:
        raise SystemExit(f"farebox: {exc}") from None
    if args.receipts is None and not settings.shared_store:
        raise SystemExit(
            "farebox: sweep reads receipts from the gateway's shared store (--store redis://...) "
            "or --receipts FILE; the memory store lives inside the gateway process"
        )
    watch_url = settings.watch_url or settings.devnet_url
    if not watch_url:
        raise SystemExit(
            "farebox: no chain: give --devnet-url, or --arc-url with --watch-url (a "
            "WhatsOnChain-style API that says which outputs are unspent)"
        )
    if not (settings.devnet_url or settings.arc_url or args.dry_run):
        raise SystemExit("farebox: nothing to broadcast through: give --arc-url, or --dry-run")
    code = asyncio.run(_run_sweep(args, settings, server, since, network, watch_url))
    raise SystemExit(code)


async def _run_sweep(
    args: argparse.Namespace,
    settings: Any,
    server: Any,
    since: int | None,
    network: str | None,
    watch_url: str,
) -> int:
    from gateway.chain import ChainError
    from gateway.chain.woc import WhatsOnChain
    from gateway.custody import sweep as sw
    from gateway.serve.assemble import open_broadcaster, open_store
    from gateway.store import StoreUnavailable

    closers = []
    if args.receipts is not None:
        source: sw.ReceiptSource = sw.FileReceipts(args.receipts)
    else:
        store = open_store(settings)
        closers.append(store.close)
        source = sw.StoreReceipts(store)
    utxos = WhatsOnChain(watch_url, network=settings.watch_network, api_key=settings.watch_api_key)
    closers.append(utxos.close)
    broadcaster = open_broadcaster(settings, callbacks=False)
    if broadcaster is not None:
        closers.append(broadcaster.close)
    try:
        report = await sw.sweep(
            server,
            args.to,
            source,
            utxos,
            broadcaster,
            since=since,
            fee_rate=args.fee_rate,
            max_inputs=args.max_inputs,
            dry_run=args.dry_run,
            network=network,
            progress=lambda line: print(line, flush=True),
        )
    except sw.SweepError as exc:
        print(f"farebox: {exc}", file=sys.stderr)
        return 1
    except ChainError as exc:
        print(f"farebox: chain unreachable, nothing sent: {exc}", file=sys.stderr)
        return 1
    except StoreUnavailable as exc:
        print(f"farebox: cannot read receipts from the store: {exc}", file=sys.stderr)
        return 1
    finally:
        for close in closers:
            await close()
    _print_sweep(report, args.to, args.dry_run)
    return 1 if report.failed else 0


def _print_sweep(report: Any, to: str, dry_run: bool) -> None:
    notes = []
    if report.spent:
        notes.append(f"{report.spent} spent already (or not paid to this key)")
    if report.without_derivation:
        notes.append(
            f"{report.without_derivation} without derivation data (accepted before Farebox "
            "recorded it): not sweepable"
        )
    if report.mismatched:
        notes.append(f"{report.mismatched} whose amount on chain differs: left alone")
    if report.extra:
        notes.append(f"{report.extra} more outputs found at receipts' addresses")
    print(f"receipts: {report.receipts}" + (f"; {'; '.join(notes)}" if notes else ""))
    if not report.batches:
        print("nothing to sweep")
        return
    if dry_run:
        built = [b for b in report.batches if b.status == "dry-run"]
        sats, fee = sum(b.satoshis for b in built), sum(b.fee for b in built)
        outputs = sum(b.inputs for b in built)
        print(
            f"dry run: would sweep {outputs} outputs, {sats} satoshis, fee {fee}, "
            f"sending {sats - fee} to {to} in {len(built)} transaction(s); nothing broadcast"
        )
    else:
        outputs = f"{report.outputs} output{'s' if report.outputs != 1 else ''}"
        print(
            f"swept {outputs}, {report.satoshis} satoshis, fee {report.fee}: "
            f"{report.satoshis - report.fee} satoshis to {to} in {len(report.swept)} "
            "transaction(s)"
        )
    for batch in report.batches:
        detail = f" ({batch.detail})" if batch.detail else ""
        print(f"  {batch.txid or '-'}  {batch.status}{detail}")
    if report.stopped:
        print(f"stopped: {report.stopped}; run the sweep again to finish", file=sys.stderr)


def _refunds(args: argparse.Namespace) -> None:
    import asyncio
    import time

    from gateway.config import ConfigError, load_settings
    from gateway.custody import sweep as sw

    try:
        settings = load_settings(args.config, {"store": args.store})
    except ConfigError as exc:
        raise SystemExit(f"farebox: {exc}") from None
    if not settings.shared_store:
        raise SystemExit(
            "farebox: the refund list is in the gateway's shared store (--store redis://...); "
            "with the memory store ask the admin API (GET /refunds)"
        )
    try:
        since = sw.parse_since(args.since, time.time()) if args.since else None
    except sw.SweepError as exc:
        raise SystemExit(f"farebox: {exc}") from None
    raise SystemExit(asyncio.run(_list_refunds(settings, since, args.open, args.format)))


async def _list_refunds(settings: Any, since: int | None, only_open: bool, fmt: str) -> int:
    import csv
    import json
    import time

    from gateway.serve.assemble import open_store
    from gateway.store import MAX_PAGE, StoreUnavailable

    store = open_store(settings)
    found = []
    try:
        after = None
        while True:
            page = await store.refunds(since=since, limit=MAX_PAGE, after=after)
            found += [r for r in page if not (only_open and r.settled)]
            if len(page) < MAX_PAGE:
                break
            after = page[-1].outpoint  # the refund list pages by output
    except StoreUnavailable as exc:
        print(f"farebox: cannot read the refund list from the store: {exc}", file=sys.stderr)
        return 1
    finally:
        await store.close()
    rows = [r.exported() for r in found]
    if fmt == "json":
        for row in rows:
            print(json.dumps(row))
    elif fmt == "csv":
        names = list(rows[0]) if rows else ["txid"]
        writer = csv.DictWriter(sys.stdout, fieldnames=names)
        writer.writeheader()
        writer.writerows(rows)
    else:

        def when(t: int) -> str:
            return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(t))

        for r in found:
            state = f"{r.settled} {when(r.settled_time)}" if r.settled else "open"
            print(
                f"{when(r.time)}  {r.txid}:{r.vout}  {r.satoshis} sat (price {r.price})  "
                f"{r.reason}  checkout {r.checkout}  {r.service} {r.method} {r.resource}  "
                f"[{state}]\n    {r.detail}"
            )
        total = sum(r.satoshis for r in found if not r.settled)
        opened = sum(1 for r in found if not r.settled)
        print(f"{len(found)} listed, {opened} open ({total} satoshis)")
    return 0


if __name__ == "__main__":
    main()
