"""`farebox wallet ...` and `farebox pay`: paying priced routes from the command line.

`gateway/cli.py` calls `register` with its subcommand table; `python -m
gateway.client.cli` runs these commands alone. Exit status: 0 done, 1
refused (limit, payment refused, no funds, no wallet, nothing reachable),
2 usage.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

import aiohttp

from gateway.client.errors import ClientError
from gateway.client.faucet import DEFAULT_DEVNET, fund
from gateway.client.session import FareboxResponse, PayingSession
from gateway.client.wallet import ENV_WALLET, Wallet

DEFAULT_FUND = 100_000
DEFAULT_MAX = 1000

WALLET_DESCRIPTION = f"""\
A wallet for paying Farebox gateways: an identity key and the coins it can
spend, in one JSON file readable by its owner only (default
~/.farebox/wallet.json, or ${ENV_WALLET}).
"""

PAY_EPILOG = """\
The response body goes to stdout; what was paid (amount, fee, txid) to
stderr. A grant bought once is kept in the wallet file and used again until
it expires, so asking twice pays once. Exit status: 0 done, 1 refused
(over --max, payment refused, not enough funds, HTTP error), 2 usage.
"""


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add `wallet` and `pay` to the `farebox` command."""
    fmt = argparse.RawDescriptionHelpFormatter
    wallet = subparsers.add_parser(
        "wallet",
        help="manage the wallet that pays for priced routes",
        description=WALLET_DESCRIPTION,
        formatter_class=fmt,
    )
    wsub = wallet.add_subparsers(title="commands", metavar="COMMAND", required=True)

    new = wsub.add_parser(
        "new",
        help="create a wallet (mode 0600)",
        description="Create a wallet with a new identity key. With --force an existing "
        "wallet is renamed to FILE.<time>.bak, never deleted.",
    )
    _wallet_option(new)
    new.add_argument("--force", action="store_true", help="replace an existing wallet")
    new.set_defaults(run=_wallet_new)

    balance = wsub.add_parser(
        "balance",
        help="show spendable satoshis",
        description="Show the spendable satoshis and how many coins hold them.",
    )
    _wallet_option(balance)
    balance.set_defaults(run=_wallet_balance)

    fund_parser = wsub.add_parser(
        "fund",
        help="take coins from a devnet faucet",
        description="Take coins from the faucet of a local devnet (the one `farebox demo` "
        "runs) and add them to the wallet.",
    )
    _wallet_option(fund_parser)
    fund_parser.add_argument(
        "--devnet",
        default=DEFAULT_DEVNET,
        metavar="URL",
        help=f"devnet base URL (default {DEFAULT_DEVNET})",
    )
    fund_parser.add_argument(
        "--satoshis",
        type=_positive,
        default=DEFAULT_FUND,
        metavar="N",
        help=f"how much to ask for (default {DEFAULT_FUND})",
    )
    fund_parser.set_defaults(run=_wallet_fund)

    pay = subparsers.add_parser(
        "pay",
        help="request a URL, paying its price if it answers 402",
        description="Request URL; if it answers 402 Payment Required with a BSV price of at "
        "most --max satoshis, pay it from the wallet and request it again.",
        epilog=PAY_EPILOG,
        formatter_class=fmt,
    )
    _wallet_option(pay)
    pay.add_argument(
        "--max",
        type=_positive,
        default=DEFAULT_MAX,
        metavar="SATS",
        help=f"refuse to pay a higher price (default {DEFAULT_MAX})",
    )
    pay.add_argument("--method", metavar="M", help="HTTP method (default GET, POST with --data)")
    pay.add_argument("--data", metavar="D", help="request body; @FILE reads it from FILE")
    pay.add_argument(
        "--pay-endpoint",
        action="store_true",
        help="pay through the gateway's pay endpoint instead of request headers",
    )
    pay.add_argument("url", metavar="URL", help="http:// or https:// URL")
    pay.set_defaults(run=_pay)


def _wallet_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--wallet",
        type=Path,
        default=None,
        metavar="FILE",
        help=f"wallet file (default ${ENV_WALLET}, else ~/.farebox/wallet.json)",
    )


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def _fail(message: str, code: int = 1) -> SystemExit:
    print(f"farebox: {message}", file=sys.stderr)
    return SystemExit(code)


def _open(path: Path | None) -> Wallet:
    try:
        return Wallet.open(path)
    except ClientError as exc:
        raise _fail(str(exc)) from None


def _balance_line(wallet: Wallet) -> str:
    b = wallet.balance()
    line = f"{b.satoshis} satoshis in {b.coins} coin{'s' if b.coins != 1 else ''}"
    if b.pending_coins:
        line += f" (and {b.pending_satoshis} reserved by payments in flight)"
    return line


def _wallet_new(args: argparse.Namespace) -> None:
    try:
        wallet = Wallet.create(args.wallet, force=args.force)
    except (ClientError, OSError) as exc:
        raise _fail(str(exc)) from None
    print(f"wrote {wallet.path} (mode 0600)")
    print(f"identity key: {wallet.identity_key}")


def _wallet_balance(args: argparse.Namespace) -> None:
    print(_balance_line(_open(args.wallet)))


def _wallet_fund(args: argparse.Namespace) -> None:
    wallet = _open(args.wallet)
    try:
        coin = asyncio.run(fund(wallet, args.satoshis, args.devnet))
    except ClientError as exc:
        raise _fail(str(exc)) from None
    print(f"funded {coin.satoshis} satoshis: txid {coin.txid}")
    print(f"balance: {_balance_line(wallet)}")


def _pay(args: argparse.Namespace) -> None:
    if not args.url.startswith(("http://", "https://")):
        raise _fail(f"pay: URL must start with http:// or https://: {args.url}", 2)
    data: bytes | None = None
    if args.data is not None:
        try:
            data = (
                Path(args.data[1:]).read_bytes()
                if args.data.startswith("@")
                else args.data.encode()
            )
        except OSError as exc:
            raise _fail(f"pay: cannot read {args.data[1:]}: {exc.strerror}", 2) from None
    method = (args.method or ("POST" if data is not None else "GET")).upper()
    wallet = _open(args.wallet)
    code = asyncio.run(_pay_and_print(wallet, method, args.url, data, args))
    if code:
        raise SystemExit(code)


async def _pay_and_print(
    wallet: Wallet, method: str, url: str, data: bytes | None, args: argparse.Namespace
) -> int:
    session = PayingSession(
        wallet,
        max_per_request=args.max,
        use_pay_endpoint=args.pay_endpoint,
        chain_url=wallet.chain,  # fresh proofs keep change BEEFs short
    )
    try:
        async with session, session.request(method, url, data=data) as resp:
            body = await resp.read()
            _report(resp)
    except ClientError as exc:
        print(f"farebox: {exc}", file=sys.stderr)
        return 1
    except aiohttp.InvalidURL:
        print(f"farebox: pay: not a usable URL: {url}", file=sys.stderr)
        return 2
    except (aiohttp.ClientError, TimeoutError) as exc:
        print(f"farebox: cannot get {url}: {exc or type(exc).__name__}", file=sys.stderr)
        return 1
    sys.stdout.buffer.write(body)
    sys.stdout.buffer.flush()
    return 1 if resp.status >= 400 else 0


def _report(resp: FareboxResponse) -> None:
    paid = resp.farebox_payment
    if paid is not None:
        via = " via the pay endpoint" if paid.via == "pay-endpoint" else ""
        print(
            f"paid {paid.satoshis} satoshis (fee {paid.fee}){via}: txid {paid.txid}",
            file=sys.stderr,
        )
    elif resp.farebox_used_token:
        print("paid nothing: used a stored token", file=sys.stderr)
    elif resp.status == 402:
        print("paid nothing: the 402 asks for no BSV payment", file=sys.stderr)
    else:
        print("paid nothing: no payment was asked", file=sys.stderr)
    if resp.status >= 400:
        print(f"HTTP {resp.status} {resp.reason or ''}".rstrip(), file=sys.stderr)


def main(argv: list[str] | None = None) -> None:
    """These commands alone (`python -m gateway.client.cli`), as `farebox` would run them."""
    parser = argparse.ArgumentParser(prog="farebox", description="Pay Farebox gateways.")
    register(parser.add_subparsers(title="commands", metavar="COMMAND", required=True))
    args = parser.parse_args(argv)
    args.run(args)


if __name__ == "__main__":
    main()
