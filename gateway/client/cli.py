"""`farebox pay`: paying priced routes from the command line (and where `farebox
wallet ...` is hooked in: its commands are in wallet_cli.py).

Metered routes are paid from a prepaid tab: `farebox pay` opens or tops one
up when the route asks, `--top-up SATS` makes those top-ups bigger (or, with
`--balance`, makes one now) and `--balance` shows what the tab holds.

`gateway/cli.py` calls `register` with its subcommand table; `python -m
gateway.client.cli` runs these commands alone. Exit status: 0 done, 1
refused (limit, payment refused, no funds, no wallet, nothing reachable),
2 usage.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections.abc import Awaitable
from decimal import Decimal
from pathlib import Path

import aiohttp

from gateway.client.errors import ClientError
from gateway.client.responses import FareboxResponse, Payment, TabBalance
from gateway.client.session import PayingSession
from gateway.client.wallet_cli import DESCRIPTION as WALLET_DESCRIPTION
from gateway.client.wallet_cli import fail, open_wallet, positive, wallet_option
from gateway.client.wallet_cli import register as register_wallet

DEFAULT_MAX = 1000


PAY_EPILOG = """\
The response body goes to stdout; what was paid (amount, fee, txid) to
stderr. A grant bought once is kept in the wallet file and used again until
it expires, so asking twice pays once. A payment whose answer was lost
(a 5xx, a reset, a timeout) stays pending and is sent again, the very same
payment, by the next `farebox pay` for the same URL: never a second one.
Only URL's origin is paid unless --allow-origin names another.

Metered routes are paid from a prepaid tab, one per service: the first
request pays a top-up (the gateway's smallest, or --top-up SATS if more),
which opens a tab; later requests are charged from it (stderr: "charged 10
satoshis from tab t3f…, 990 left") and pay nothing, until it runs low and
the next request tops the same tab up. The tab's token is kept in the wallet.

  farebox pay URL                    request; pay the price, or draw on the tab
  farebox pay --top-up N URL         the same; top-ups are at least N satoshis
  farebox pay --balance URL          show what the tab of URL's service holds
  farebox pay --balance --top-up N URL   top that tab up by N now, and show it

Exit status: 0 done, 1 refused (over --max, payment refused, not enough
funds, no tab, HTTP error), 2 usage.
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
    register_wallet(wallet.add_subparsers(title="commands", metavar="COMMAND", required=True))

    pay = subparsers.add_parser(
        "pay",
        help="request a URL, paying its price (or a tab's top-up) if it answers 402",
        description="Request URL; if it answers 402 Payment Required with a BSV price (or a\n"
        "tab's top-up) of at most --max satoshis, pay it from the wallet and request\n"
        "it again.",
        epilog=PAY_EPILOG,
        formatter_class=fmt,
    )
    wallet_option(pay)
    pay.add_argument(
        "--max",
        type=positive,
        default=None,
        metavar="SATS",
        help="refuse to pay more at once, price or top-up "
        f"(default {DEFAULT_MAX}, or --top-up if that is more)",
    )
    pay.add_argument(
        "--top-up",
        type=positive,
        default=None,
        metavar="SATS",
        help="when a tab is opened or topped up, pay at least SATS into it; "
        "with --balance, top URL's tab up by SATS now instead of requesting URL",
    )
    pay.add_argument(
        "--balance",
        action="store_true",
        help="show what the wallet's tab for URL's service holds instead of requesting URL",
    )
    pay.add_argument(
        "--method",
        metavar="M",
        help="HTTP method (default GET, POST with --data); with --balance --top-up, "
        "one that URL's route takes",
    )
    pay.add_argument("--data", metavar="D", help="request body; @FILE reads it from FILE")
    pay.add_argument(
        "--pay-endpoint",
        action="store_true",
        help="pay through the gateway's pay endpoint instead of request headers",
    )
    pay.add_argument(
        "--allow-origin",
        action="append",
        default=[],
        metavar="ORIGIN",
        help="also pay a 402 from ORIGIN (scheme://host[:port]) when URL redirects there; "
        "by default only URL's own origin is paid (repeatable)",
    )
    pay.add_argument("url", metavar="URL", help="http:// or https:// URL")
    pay.set_defaults(run=_pay)


def _pay(args: argparse.Namespace) -> None:
    if not args.url.startswith(("http://", "https://")):
        raise fail(f"pay: URL must start with http:// or https://: {args.url}", 2)
    if args.max is not None and args.top_up is not None and args.top_up > args.max:
        raise fail(f"pay: --top-up {args.top_up} is more than --max {args.max}", 2)
    if args.balance and args.data is not None:
        raise fail("pay: --balance sends no request body: drop --data", 2)
    data: bytes | None = None
    if args.data is not None:
        try:
            data = (
                Path(args.data[1:]).read_bytes()
                if args.data.startswith("@")
                else args.data.encode()
            )
        except OSError as exc:
            raise fail(f"pay: cannot read {args.data[1:]}: {exc.strerror}", 2) from None
    method = (args.method or ("POST" if data is not None else "GET")).upper()
    wallet = open_wallet(args.wallet)
    try:
        session = PayingSession(
            wallet,
            max_per_request=args.max or max(DEFAULT_MAX, args.top_up or 0),
            top_up=args.top_up,
            use_pay_endpoint=args.pay_endpoint,
            chain_url=wallet.chain,  # fresh proofs keep change BEEFs short
            allow_origins=args.allow_origin,
        )
    except ValueError as exc:
        raise fail(f"pay: --allow-origin: {exc}", 2) from None
    if args.balance:
        work = _balance_and_print(session, method, args.url, args.top_up)
    else:
        work = _pay_and_print(session, method, args.url, data)
    code = asyncio.run(_guarded(work, args.url))
    if code:
        raise SystemExit(code)


async def _guarded(work: Awaitable[int], url: str) -> int:
    """Run `work`; a refusal or an unreachable gateway is a message and exit 1."""
    try:
        return await work
    except ClientError as exc:
        print(f"farebox: {exc}", file=sys.stderr)
        return 1
    except aiohttp.InvalidURL:
        print(f"farebox: pay: not a usable URL: {url}", file=sys.stderr)
        return 2
    except (aiohttp.ClientError, TimeoutError) as exc:
        print(f"farebox: cannot get {url}: {exc or type(exc).__name__}", file=sys.stderr)
        return 1


async def _pay_and_print(session: PayingSession, method: str, url: str, data: bytes | None) -> int:
    async with session, session.request(method, url, data=data) as resp:
        body = await resp.read()
        _report(resp)
    sys.stdout.buffer.write(body)
    sys.stdout.buffer.flush()
    return 1 if resp.status >= 400 else 0


async def _balance_and_print(
    session: PayingSession, method: str, url: str, top_up: int | None
) -> int:
    async with session:
        if top_up is not None:
            balance = await session.top_up(url, top_up, method=method)
            _report_payment(session.payments[-1])
        else:
            found = await session.tab_balance(url)
            if found is None:
                print(
                    f"farebox: the wallet has no tab for {url}; a request to a metered route "
                    "opens one, or --top-up SATS --balance",
                    file=sys.stderr,
                )
                return 1
            balance = found
    print(_tab_line(balance))
    return 0


def _tab_line(balance: TabBalance) -> str:
    until = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(balance.expires))
    return (
        f"tab {balance.tab}: {_sats(balance.satoshis)} satoshis "
        f"(service {balance.service}, {balance.scope}; its token lasts until {until})"
    )


def _report(resp: FareboxResponse) -> None:
    paid = resp.farebox_payment
    tab = resp.farebox_tab
    if paid is not None:
        _report_payment(paid)
    elif tab is not None:
        pass  # charged from a tab: said below
    elif resp.farebox_used_token:
        print("paid nothing: used a stored token", file=sys.stderr)
    elif resp.status == 402:
        print("paid nothing: the 402 asks for no BSV payment", file=sys.stderr)
    else:
        print("paid nothing: no payment was asked", file=sys.stderr)
    if tab is not None:
        charge, limit, left = resp.farebox_charge, resp.farebox_charge_limit, resp.farebox_balance
        if charge is not None:
            line = f"charged {_sats(charge)} satoshis from tab {_short(tab)}"
            print(line + ("" if left is None else f", {_sats(left)} left"), file=sys.stderr)
        elif limit is not None:
            line = f"charged at most {_sats(limit)} satoshis from tab {_short(tab)}"
            print(
                line + ("" if left is None else f", at least {_sats(left)} left"), file=sys.stderr
            )
    if resp.status >= 400:
        print(f"HTTP {resp.status} {resp.reason or ''}".rstrip(), file=sys.stderr)


def _report_payment(paid: Payment) -> None:
    via = " via the pay endpoint" if paid.via == "pay-endpoint" else ""
    into = f" into tab {_short(paid.tab)}" if paid.tab else ""
    print(
        f"paid {paid.satoshis} satoshis (fee {paid.fee}){into}{via}: txid {paid.txid}",
        file=sys.stderr,
    )


def _short(tab: str) -> str:
    return tab if len(tab) <= 12 else tab[:10] + "…"


def _sats(amount: Decimal) -> str:
    """10 → "10", 2.930 → "2.93": as the gateway writes amounts."""
    text = format(amount, "f")
    return text.rstrip("0").rstrip(".") if "." in text else text


def main(argv: list[str] | None = None) -> None:
    """These commands alone (`python -m gateway.client.cli`), as `farebox` would run them."""
    parser = argparse.ArgumentParser(prog="farebox", description="Pay Farebox gateways.")
    register(parser.add_subparsers(title="commands", metavar="COMMAND", required=True))
    args = parser.parse_args(argv)
    args.run(args)


if __name__ == "__main__":
    main()
