"""`farebox wallet ...`: the wallet file from the command line.

new, balance, fund (a devnet faucet), address and receive (coins paid to the
wallet by anyone), coins (each coin, payments in flight, coins set aside and
why), tokens (the grants kept), receipts (what gateways took, and their
receipts). Listings take `--json` for scripts. Exit status: 0 done, 1
refused (no wallet, nothing reachable, nothing found), 2 usage.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
from bsv import PublicKey
from yarl import URL

from gateway.bsv.derivation import invoice_number, p2pkh_script
from gateway.client.errors import ClientError
from gateway.client.faucet import DEFAULT_DEVNET, fund
from gateway.client.receiving import check_received, unspent
from gateway.client.wallet import Wallet
from gateway.client.walletfile import ENV_WALLET
from gateway.edge.urls import RECEIPTS

DEFAULT_FUND = 100_000

DESCRIPTION = f"""\
A wallet for paying Farebox gateways: an identity key and the coins it can
spend, in one JSON file readable by its owner only (default
~/.farebox/wallet.json, or ${ENV_WALLET}).

A payment whose answer never came stays pending and is sent again, the very
same payment, by the next request for the same thing: `farebox wallet coins`
lists such payments and the coins they hold. A coin a gateway refused (its
proof unknown there, say after a devnet restart) is set aside with the
reason and never chosen again; `coins --restore` offers it again.
"""


def register(wsub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the wallet commands to `farebox wallet`'s subcommand table."""
    new = wsub.add_parser(
        "new",
        help="create a wallet (mode 0600)",
        description="Create a wallet with a new identity key. With --force an existing "
        "wallet is renamed to FILE.<time>.bak, never deleted.",
    )
    wallet_option(new)
    new.add_argument("--force", action="store_true", help="replace an existing wallet")
    new.set_defaults(run=_new)

    identity = wsub.add_parser(
        "identity",
        help="print the wallet's identity key (where rewards and BRC-29 payments go)",
        description="Print the wallet's identity key: a compressed public key in hex. Give it "
        "as X-Farebox-Payout-To (a reward) or as a benefit list's recipient; it is paid "
        "BRC-29, to keys only this wallet can derive.",
    )
    wallet_option(identity)
    identity.set_defaults(run=_identity)

    balance = wsub.add_parser(
        "balance",
        help="show spendable satoshis",
        description="Show the spendable satoshis and how many coins hold them, what "
        "payments in flight hold, and what is set aside.",
    )
    wallet_option(balance)
    balance.set_defaults(run=_balance)

    fund_parser = wsub.add_parser(
        "fund",
        help="take coins from a devnet faucet",
        description="Take coins from the faucet of a local devnet (the one `farebox demo` "
        "runs) and add them to the wallet.",
    )
    wallet_option(fund_parser)
    fund_parser.add_argument(
        "--devnet-url",
        "--devnet",
        dest="devnet",
        default=DEFAULT_DEVNET,
        metavar="URL",
        help=f"devnet base URL (default {DEFAULT_DEVNET})",
    )
    fund_parser.add_argument(
        "--satoshis",
        type=positive,
        default=DEFAULT_FUND,
        metavar="N",
        help=f"how much to ask for (default {DEFAULT_FUND})",
    )
    fund_parser.set_defaults(run=_fund)

    address = wsub.add_parser(
        "address",
        help="show a new address to receive coins at",
        description="Hand out a new key of this wallet and print its P2PKH address and "
        "public key. Once a payment to it is on chain, `farebox wallet receive TXID` "
        "adds the coin.",
    )
    wallet_option(address)
    address.set_defaults(run=_address)

    receive = wsub.add_parser(
        "receive",
        help="add the coins a transaction pays to this wallet",
        description="Add every output of TXID that pays an address of this wallet. The "
        "transaction and its proof (BEEF) come from --beef FILE (hex or binary, `-` for "
        "stdin: what a paying wallet hands over) or from the devnet (--devnet-url). "
        "Either way it counts only once its signatures check and the devnet knows the "
        "blocks its proof names. With --payout URL, take in a payout a gateway owes this "
        "wallet's identity key (a reward: the X-Farebox-Payout URL of the answer), paid "
        "BRC-29 to a key only this wallet can derive.",
    )
    wallet_option(receive)
    receive.add_argument(
        "txid", nargs="?", metavar="TXID", help="the paying transaction's id (hex)"
    )
    receive.add_argument(
        "--payout", metavar="URL", help="a payout's URL (X-Farebox-Payout) instead of a TXID"
    )
    receive.add_argument("--beef", metavar="FILE", help="BEEF holding TXID (hex or binary)")
    receive.add_argument(
        "--devnet-url",
        default=None,
        metavar="URL",
        help="devnet to fetch the BEEF from and check its proof against (default: the one "
        "the wallet was funded from, "
        f"else {DEFAULT_DEVNET})",
    )
    receive.set_defaults(run=_receive)

    coins = wsub.add_parser(
        "coins",
        help="list coins, payments in flight and coins set aside",
        description="List each coin with its state: spendable, held by a payment in "
        "flight, or set aside (and why); then the payments in flight.",
    )
    wallet_option(coins)
    coins.add_argument(
        "--restore",
        nargs="*",
        metavar="TXID:VOUT",
        default=None,
        help="offer coins set aside for payments again, those the devnet still has unspent "
        "(all of them without arguments)",
    )
    coins.add_argument(
        "--check",
        action="store_true",
        help="ask the devnet which spendable coins it still has unspent, and set the others "
        "aside (after a devnet restart, say)",
    )
    coins.add_argument(
        "--abandon",
        metavar="TXID",
        default=None,
        help="give up a payment in flight that the network never saw: its coins are free "
        "again (refused if the devnet has it: then it is spent)",
    )
    json_option(coins)
    coins.set_defaults(run=_coins)

    tokens = wsub.add_parser(
        "tokens",
        help="list the grants (access tokens) kept",
        description="List the access tokens the wallet keeps, by gateway: what each opens "
        "and until when. Expired ones are dropped.",
    )
    wallet_option(tokens)
    json_option(tokens)
    tokens.set_defaults(run=_tokens)

    receipts = wsub.add_parser(
        "receipts",
        help="list payments gateways took",
        description="List the payments gateways took (the last 1000): when, where, what "
        "for, how much. With --fetch, ask each gateway for its receipt, shown with a "
        "token the wallet still holds for that payment.",
    )
    wallet_option(receipts)
    receipts.add_argument(
        "--fetch", action="store_true", help="fetch each gateway's receipt (needs its token)"
    )
    json_option(receipts)
    receipts.set_defaults(run=_receipts)


# ----- shared with `farebox pay` -------------------------------------------------------


def wallet_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--wallet",
        type=Path,
        default=None,
        metavar="FILE",
        help=f"wallet file (default ${ENV_WALLET}, else ~/.farebox/wallet.json)",
    )


def json_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print JSON instead of text")


def positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def fail(message: str, code: int = 1) -> SystemExit:
    print(f"farebox: {message}", file=sys.stderr)
    return SystemExit(code)


def open_wallet(path: Path | None) -> Wallet:
    try:
        return Wallet.open(path)
    except ClientError as exc:
        raise fail(str(exc)) from None


def balance_line(wallet: Wallet) -> str:
    b = wallet.balance()
    line = f"{b.satoshis} satoshis in {b.coins} coin{'s' if b.coins != 1 else ''}"
    if b.pending_coins:
        line += f" (and {b.pending_satoshis} reserved by payments in flight)"
    if b.set_aside_coins:
        line += (
            f"; {b.set_aside_satoshis} set aside in {b.set_aside_coins} "
            f"coin{'s' if b.set_aside_coins != 1 else ''} a gateway refused "
            "(`farebox wallet coins`)"
        )
    return line


# ----- the commands -------------------------------------------------------------------


def _new(args: argparse.Namespace) -> None:
    try:
        wallet = Wallet.create(args.wallet, force=args.force)
    except (ClientError, OSError) as exc:
        raise fail(str(exc)) from None
    print(f"wrote {wallet.path} (mode 0600)")
    print(f"identity key: {wallet.identity_key}")


def _identity(args: argparse.Namespace) -> None:
    print(open_wallet(args.wallet).identity_key)


def _balance(args: argparse.Namespace) -> None:
    print(balance_line(open_wallet(args.wallet)))


def _fund(args: argparse.Namespace) -> None:
    wallet = open_wallet(args.wallet)
    try:
        coin = asyncio.run(fund(wallet, args.satoshis, args.devnet))
    except ClientError as exc:
        raise fail(str(exc)) from None
    print(f"funded {coin.satoshis} satoshis: txid {coin.txid}")
    print(f"balance: {balance_line(wallet)}")


def _address(args: argparse.Namespace) -> None:
    wallet = open_wallet(args.wallet)
    index, key = wallet.new_key()
    print(key.address())
    print(f"public key {key.public_key().hex()} (wallet key {index})", file=sys.stderr)
    print("once a payment to it is on chain: farebox wallet receive TXID", file=sys.stderr)


def _receive(args: argparse.Namespace) -> None:
    wallet = open_wallet(args.wallet)
    if args.payout is not None:
        if args.txid is not None or args.beef is not None:
            raise fail("receive: give a TXID (and --beef) or --payout URL, not both", 2)
        _receive_payout(wallet, args)
        return
    if args.txid is None:
        raise fail("receive: give the paying TXID, or --payout URL", 2)
    txid = args.txid.strip().lower()
    if len(txid) != 64 or any(c not in "0123456789abcdef" for c in txid):
        raise fail(f"receive: not a txid (64 hex digits): {args.txid}", 2)
    chain = args.devnet_url or wallet.chain or DEFAULT_DEVNET
    beef = _read_beef_file(args.beef) if args.beef is not None else None
    try:
        if beef is None:
            beef = asyncio.run(_fetch_beef(chain, txid))
        # Bytes someone handed over count only once the chain vouches for them.
        asyncio.run(check_received(beef, txid, chain))
        ours = wallet.ours(beef, txid)
        if not ours:
            raise fail(
                f"{txid} pays no address of this wallet (`farebox wallet address` makes one)"
            )
        live = asyncio.run(unspent(chain, [(txid, vout, script) for vout, _, script in ours]))
        coins = []
        for vout, index, _ in ours:
            if wallet.has_coin(txid, vout):
                print(f"{txid}:{vout} is in the wallet already")
            elif (txid, vout) not in live:
                print(f"{txid}:{vout} is spent already (or unknown to {chain}): not added")
            else:
                coins.append(wallet.receive(beef, txid, vout, index))
    except ClientError as exc:
        raise fail(str(exc)) from None
    if wallet.chain is None:
        wallet.set_chain(chain)  # where fresh proofs for these coins come from
    for coin in coins:
        print(f"received {coin.satoshis} satoshis: {coin.txid}:{coin.vout}")
    print(f"balance: {balance_line(wallet)}")


def _receive_payout(wallet: Wallet, args: argparse.Namespace) -> None:
    """A BRC-29 payout from its URL: the derived key checked against the output,
    the BEEF against the chain, the output unspent; then it is a coin."""
    chain = args.devnet_url or wallet.chain or DEFAULT_DEVNET
    shown = asyncio.run(_fetch_payout(args.payout))
    status = shown.get("status")
    remit = shown.get("internalizeAction")
    if status in ("reserved", "owed") or (status == "signed" and remit is None):
        raise fail(f"receive: the payout is {status}, not paid yet: try again in a few seconds")
    if status == "failed":
        raise fail(f"receive: the payout failed ({shown.get('reason', '')}): ask the sender")
    if not isinstance(remit, dict):
        raise fail("receive: the payout pays an address, not this wallet's identity key")
    if shown.get("recipient") not in (None, wallet.identity_key):
        raise fail(
            f"receive: this payout is for {shown.get('recipient')}; this wallet's identity key "
            f"is {wallet.identity_key} (another wallet file? `farebox wallet identity`)"
        )
    try:
        beef = bytes(remit["tx"])
        (output,) = remit["outputs"]
        vout = int(output["outputIndex"])
        data = output["paymentRemittance"]
        sender = PublicKey(str(data["senderIdentityKey"]))
        invoice = invoice_number(str(data["derivationPrefix"]), str(data["derivationSuffix"]))
        txid = str(shown["txid"])
    except (KeyError, TypeError, ValueError):
        raise fail("receive: the payout URL answered something that is not a payout") from None
    key = wallet.identity.derive_child(sender, invoice)
    try:
        asyncio.run(check_received(beef, txid, chain))
        if wallet.has_coin(txid, vout):
            print(f"{txid}:{vout} is in the wallet already")
        else:
            script = p2pkh_script(key.public_key())
            if (txid, vout) not in asyncio.run(unspent(chain, [(txid, vout, script)])):
                raise fail(f"receive: {txid}:{vout} is spent already (or unknown to {chain})")
            coin = wallet.receive_key(beef, txid, vout, key)
            print(f"received {coin.satoshis} satoshis: {coin.txid}:{coin.vout}")
    except ClientError as exc:
        raise fail(str(exc)) from None
    if wallet.chain is None:
        wallet.set_chain(chain)
    print(f"balance: {balance_line(wallet)}")


async def _fetch_payout(url: str) -> dict:
    try:
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as http,
            http.get(url, headers={"Accept": "application/json"}) as resp,
        ):
            body = await resp.json(content_type=None)
            status = resp.status
    except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
        raise fail(f"receive: cannot fetch {url}: {exc or type(exc).__name__}") from None
    if status != 200 or not isinstance(body, dict):
        detail = body.get("detail") if isinstance(body, dict) else None
        raise fail(f"receive: {url} answered {status}: {detail or 'not a payout'}")
    return body


def _read_beef_file(name: str) -> bytes:
    try:
        data = sys.stdin.buffer.read() if name == "-" else Path(name).read_bytes()
    except OSError as exc:
        raise fail(f"receive: cannot read {name}: {exc.strerror}") from None
    text = data.strip()
    try:
        return bytes.fromhex(text.decode("ascii"))
    except (UnicodeDecodeError, ValueError):
        return data  # binary BEEF


async def _fetch_beef(chain: str, txid: str) -> bytes:
    where = f"{chain.rstrip('/')}/beef/{txid}"
    try:
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as http,
            http.get(where) as resp,
        ):
            body = await resp.json(content_type=None) if resp.status == 200 else None
    except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
        raise fail(f"receive: cannot ask {chain} for {txid}: {exc or type(exc).__name__}") from None
    beef = body.get("beef") if isinstance(body, dict) else None
    if not isinstance(beef, str):
        raise fail(f"receive: {chain} does not know {txid} (or give its BEEF with --beef)")
    try:
        return bytes.fromhex(beef)
    except ValueError:
        raise fail(f"receive: {chain} answered with an unreadable BEEF for {txid}") from None


def _coins(args: argparse.Namespace) -> None:
    wallet = open_wallet(args.wallet)
    if args.abandon is not None:
        _abandon(wallet, args.abandon.strip().lower())
        return
    if args.restore is not None:
        _restore(wallet, [_outpoint(o) for o in args.restore])
        return
    if args.check:
        _check(wallet)
        return
    coins = [
        {
            "outpoint": f"{c.txid}:{c.vout}",
            "satoshis": c.satoshis,
            "state": "held" if c.reserved_by else "set-aside" if c.set_aside else "spendable",
            "payment": c.reserved_by,
            "why": c.set_aside,
        }
        for c in wallet.coins()
    ]
    pending = [
        {
            "txid": p.txid,
            "satoshis": p.payment.satoshis if p.payment is not None else None,
            "for": f"{p.purpose.origin} {p.purpose.what}" if p.purpose is not None else None,
            "since": int(p.since),
            "on_chain": p.on_chain,
        }
        for p in wallet.pending()
    ]
    if args.json:
        print(json.dumps({"coins": coins, "pending": pending}, indent=1))
        return
    for c in coins:
        state = c["state"]
        if c["payment"]:
            state += f" by payment {c['payment']}"
        if c["why"]:
            state += f": {c['why']}"
        print(f"{c['outpoint']}  {c['satoshis']:>12} sat  {state}")
    if not coins:
        print("no coins (`farebox wallet fund`, or `address` and `receive`)")
    for p in pending:
        where = " (on chain)" if p["on_chain"] else ""
        if p["for"] is None:  # from a wallet file older than pending purposes
            print(
                f"payment in flight {p['txid']}{where}: not sent again by itself; "
                f"`farebox wallet coins --abandon {p['txid']}` frees its coins if the "
                "network never saw it"
            )
            continue
        print(
            f"payment in flight {p['txid']}{where}: {p['satoshis']} sat for {p['for']}, "
            f"since {_when(p['since'])}; the next request for it sends it again"
        )
    print(balance_line(wallet))


def _restore(wallet: Wallet, outpoints: list[tuple[str, int]]) -> None:
    aside = [c for c in wallet.coins() if c.set_aside and c.reserved_by is None]
    chosen = [c for c in aside if not outpoints or c.outpoint in outpoints]
    missing = set(outpoints) - {c.outpoint for c in chosen}
    if missing:
        named = ", ".join(f"{t}:{v}" for t, v in sorted(missing))
        raise fail(f"coins --restore: not a coin set aside: {named}")
    chain = wallet.chain or DEFAULT_DEVNET
    try:
        live = asyncio.run(
            unspent(chain, [(c.txid, c.vout, bytes.fromhex(c.script)) for c in chosen])
        )
    except ClientError as exc:
        raise fail(f"coins --restore: {exc}; nothing restored") from None
    for c in chosen:
        if c.outpoint not in live:
            print(f"{c.txid}:{c.vout} stays set aside: {chain} does not have it unspent")
    restored = wallet.restore(live)
    print(f"restored {restored} coin{'s' if restored != 1 else ''}; {balance_line(wallet)}")


def _check(wallet: Wallet) -> None:
    chain = wallet.chain or DEFAULT_DEVNET
    coins = [c for c in wallet.coins() if c.spendable]
    try:
        live = asyncio.run(
            unspent(chain, [(c.txid, c.vout, bytes.fromhex(c.script)) for c in coins])
        )
    except ClientError as exc:
        raise fail(f"coins --check: {exc}; nothing changed") from None
    gone = [c.outpoint for c in coins if c.outpoint not in live]
    reason = (
        f"{chain} does not have it unspent: spent, or from a devnet that has since restarted "
        "(`farebox wallet fund` gets new coins)"
    )
    wallet.set_aside_coins(gone, reason)
    print(
        f"checked {len(coins)} coin{'s' if len(coins) != 1 else ''} against {chain}: "
        f"{len(gone)} set aside; {balance_line(wallet)}"
    )


def _abandon(wallet: Wallet, txid: str) -> None:
    pending = {p.txid: p for p in wallet.pending()}
    if txid not in pending:
        raise fail(f"coins --abandon: no payment in flight is {txid}")
    chain = wallet.chain or DEFAULT_DEVNET
    status = asyncio.run(_chain_status(chain, txid))
    if status is None:
        raise fail(f"coins --abandon: cannot ask {chain} about {txid}: nothing changed")
    if status != "unknown":
        wallet.seen_on_chain(txid)
        raise fail(
            f"coins --abandon: the network has {txid} ({status}): it is spent, not abandoned; "
            "the next request for what it bought sends it again to get the grant"
        )
    wallet.release(txid)
    print(f"abandoned {txid}: its coins are free again; {balance_line(wallet)}")


async def _chain_status(chain: str, txid: str) -> str | None:
    """The devnet's word on `txid`: its status, "unknown" (404), None if no answer."""
    try:
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as http,
            http.get(f"{chain.rstrip('/')}/v1/tx/{txid}") as resp,
        ):
            if resp.status == 404:
                return "unknown"
            body = await resp.json(content_type=None) if resp.status == 200 else None
    except (aiohttp.ClientError, TimeoutError, ValueError):
        return None
    status = body.get("txStatus") if isinstance(body, dict) else None
    return str(status) if status else None


def _outpoint(text: str) -> tuple[str, int]:
    txid, _, vout = text.partition(":")
    if len(txid) != 64 or not vout.isdigit():
        raise fail(f"coins --restore: not TXID:VOUT: {text}", 2)
    return txid.lower(), int(vout)


def _tokens(args: argparse.Namespace) -> None:
    wallet = open_wallet(args.wallet)
    now = time.time()
    found = [
        {
            "origin": t.origin,
            "service": t.service,
            "opens": t.scope,
            "covers": t.covers,
            "methods": list(t.methods),
            "expires": t.expires,
            "txid": t.txid,
            "tab": t.tab or None,
        }
        for t in wallet.all_tokens()
        if t.usable(now)
    ]
    if args.json:
        print(json.dumps(found, indent=1))
        return
    for t in found:
        what = f"tab {t['tab']}" if t["tab"] else f"{t['covers']} {t['opens']}"
        methods = "any method" if t["methods"] == ["*"] else ", ".join(t["methods"])
        print(
            f"{t['origin']}  {t['service']}: {what} ({methods}) "
            f"until {_when(t['expires'])}; paid by {t['txid']}"
        )
    if not found:
        print("no tokens: nothing bought that is still valid")


def _receipts(args: argparse.Namespace) -> None:
    wallet = open_wallet(args.wallet)
    paid = [
        {
            "txid": p.txid,
            "origin": p.origin,
            "for": p.what,
            "satoshis": p.satoshis,
            "fee": p.fee,
            "time": int(p.time),
        }
        for p in wallet.history()
    ]
    if args.fetch:
        tokens = {(t.origin, t.txid): t for t in wallet.all_tokens()}
        asyncio.run(_fetch_receipts(paid, tokens))
    if args.json:
        print(json.dumps(paid, indent=1))
        return
    for p in paid:
        print(
            f"{_when(p['time'])}  {p['origin']} {p['for']}: {p['satoshis']} sat "
            f"(fee {p['fee']}), txid {p['txid']}"
        )
        if "receipt" in p:
            print(f"    receipt: {json.dumps(p['receipt'])}")
    if not paid:
        print("no payments recorded")


async def _fetch_receipts(paid: list[dict[str, Any]], tokens: dict[tuple[str, str], Any]) -> None:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as http:
        for p in paid:
            token = tokens.get((p["origin"], p["txid"]))  # only the gateway that issued it
            if token is None:
                p["receipt"] = (
                    "no token kept to show it with (it expired, or the gateway refused it "
                    "and the wallet dropped it)"
                )
                continue
            where = URL(p["origin"]).join(URL(RECEIPTS + p["txid"]))
            headers = {"Authorization": f"Bearer {token.token}"}
            try:
                async with http.get(where, headers=headers, allow_redirects=False) as resp:
                    body = await resp.json(content_type=None)
                    if resp.status == 200:
                        p["receipt"] = body
                    elif resp.status == 404:
                        p["receipt"] = "the gateway has no receipt for it under this token (404)"
                    else:
                        p["receipt"] = f"the gateway answered HTTP {resp.status}"
            except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
                p["receipt"] = f"the gateway at {p['origin']} did not answer ({type(exc).__name__})"


def _when(seconds: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(seconds))
