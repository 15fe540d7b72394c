"""`farebox payouts send | status | show`: benefit payouts from a list (issue 15, point 3).

`send` reads LIST.csv whole (listfile), refuses it with every bad row named
if anything is wrong, checks that the treasury covers all of it, records
the rows owed in the list's ledger (`LIST.payouts.db`, SQLite, beside the
list unless --ledger says otherwise), then pays them with the payout engine
in batches, printing progress, a reconciliation and `LIST.result.csv`.
Running it again pays only what is not paid yet: the ledger knows every id.

Exit status: 0 every row paid (sent, seen or mined); 1 something is left
(refused, unreachable chain, short treasury) or the command was refused;
2 the list has bad rows (nothing paid).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import csv
import json
import logging
import sqlite3
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gateway.client.errors import ClientError, InsufficientFunds, WalletBusy
from gateway.client.wallet import Wallet
from gateway.payouts import listfile
from gateway.payouts.engine import (
    DEFAULT_BATCH_SIZE,
    MAX_BATCH_SIZE,
    PayoutEngine,
    Report,
    fee_estimate,
    new_payout,
)
from gateway.payouts.ledgerfile import FileLedger, LedgerError, open_ledger
from gateway.payouts.records import PAID, STATUSES, Batch, Payout
from gateway.payouts.remittance import remittance

SEND_DESCRIPTION = """\
Pay everyone on a benefit list from a treasury wallet.

LIST.csv has a header row naming the columns id, recipient, satoshis and
optionally memo. `recipient` is a BSV address (paid P2PKH) or a compressed
public key in hex (paid BRC-29: a key derived from it, which any BRC-100
wallet takes in with the data `farebox payouts show ID` prints). `id` is
the row's idempotency key: it is paid at most once, however often the list
is sent.
"""

SEND_EPILOG = """\
The whole list is checked first and every bad row is named by line; nothing
is paid if any row is bad. A treasury that cannot cover the whole list
(amounts and fees) is refused before anything is sent. Then the rows are
recorded owed in the ledger (LIST.payouts.db beside the list, mode 0600)
before anything is signed, paid in transactions of --batch-size outputs,
and LIST.result.csv (id,recipient,satoshis,status,txid) is written.

Interrupted (Ctrl-C, a crash, the chain unreachable)? Run the same command
again: a transaction already signed is broadcast again as it was (never a
second one), and only what is not paid yet is paid. Keep the ledger with
the list: it is what remembers which ids were paid.

Exit status: 0 every row paid; 1 something is left to pay, or the run was
refused; 2 the list has bad rows.
"""

STATUS_DESCRIPTION = """\
List the payouts a ledger holds, by state: reserved (a reward held while its
answer goes upstream), owed (recorded, not signed yet), signed (in a
transaction not yet known to the network), sent (ARC took it), seen (the
network has it), mined, or failed (see the reason; `send` again asks the
chain and retries what is safe to). The states are as the ledger last
recorded them: `send` (or a gateway's engine) updates them. Mined payouts are
counted, not listed, unless asked for with --state mined.
"""


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    fmt = argparse.RawDescriptionHelpFormatter
    payouts = sub.add_parser(
        "payouts",
        help="pay citizens: benefit lists from a treasury wallet",
        description="Payouts: money from the treasury to people (benefits, rewards).",
        formatter_class=fmt,
    )
    psub = payouts.add_subparsers(title="commands", metavar="COMMAND", required=True)

    send = psub.add_parser(
        "send",
        help="pay a benefit list (LIST.csv) from a treasury wallet",
        description=SEND_DESCRIPTION,
        epilog=SEND_EPILOG,
        formatter_class=fmt,
    )
    send.add_argument("list", type=Path, metavar="LIST.csv", help="the benefit list")
    send.add_argument(
        "--wallet",
        type=Path,
        required=True,
        metavar="TREASURY",
        help="the treasury: a wallet file (farebox wallet new; fund it with farebox wallet fund "
        "on a devnet, or farebox wallet address + receive)",
    )
    chain = send.add_mutually_exclusive_group()
    chain.add_argument("--devnet-url", metavar="URL", help="pay on a devnet (farebox devnet)")
    chain.add_argument("--arc-url", metavar="URL", help="broadcast through this ARC")
    send.add_argument(
        "--arc-api-key", metavar="KEY", help="ARC API key (sent as Authorization: Bearer)"
    )
    send.add_argument(
        "--network",
        choices=("main", "test"),
        help="the network addresses must be of (default: main with --arc-url; either on a devnet)",
    )
    send.add_argument("--ledger", type=Path, metavar="FILE", help="default: LIST.payouts.db")
    send.add_argument(
        "--batch-size",
        type=_batch_size,
        default=DEFAULT_BATCH_SIZE,
        metavar="N",
        help=f"payouts per transaction (default {DEFAULT_BATCH_SIZE}, at most {MAX_BATCH_SIZE})",
    )
    send.add_argument(
        "--dry-run",
        action="store_true",
        help="check the list and the treasury, print the count, total and fees; pay nothing",
    )
    send.set_defaults(run=_send)

    status = psub.add_parser(
        "status",
        help="list payouts by state",
        description=STATUS_DESCRIPTION,
        formatter_class=fmt,
    )
    where = status.add_mutually_exclusive_group(required=True)
    where.add_argument(
        "list", nargs="?", type=Path, metavar="LIST.csv", help="the list (its ledger is read)"
    )
    where.add_argument("--ledger", type=Path, metavar="FILE", help="a ledger file")
    status.add_argument("--state", choices=STATUSES, help="only payouts in this state")
    status.add_argument(
        "--format", choices=("text", "json", "csv"), default="text", help="default text"
    )
    status.set_defaults(run=_status)

    show = psub.add_parser(
        "show",
        help="one payout, with what a wallet needs to take it in (internalizeAction)",
        description="Print one payout as one line of JSON: its state and txid and, once "
        "signed, `internalizeAction`: the arguments of a BRC-100 wallet's internalizeAction "
        "(the transaction as Atomic BEEF, a list of byte values; the output index; the BRC-29 "
        "derivation prefix, suffix and sender identity key), and `beef`, the same BEEF in "
        "base64. Give it to the recipient. A payout to an address has no internalizeAction: "
        "its recipient takes it in with `farebox wallet receive TXID`.",
        formatter_class=fmt,
    )
    show.add_argument("id", help="the payout's id (the list's id column)")
    where = show.add_mutually_exclusive_group(required=True)
    where.add_argument(
        "list", nargs="?", type=Path, metavar="LIST.csv", help="the list (its ledger is read)"
    )
    where.add_argument("--ledger", type=Path, metavar="FILE", help="a ledger file")
    show.set_defaults(run=_show)

    cancel = psub.add_parser(
        "cancel",
        help="give up failed payouts an admin has checked were not paid",
        description="Cancel failed payouts, for good: after checking on chain that the "
        "refused transactions they name will never be mined (or paying them some other "
        "way). They are never paid by Farebox; pay the rows again under new ids if owed.",
        formatter_class=fmt,
    )
    cancel.add_argument("ids", nargs="+", metavar="ID", help="the payouts' ids")
    where = cancel.add_mutually_exclusive_group(required=True)
    where.add_argument("--list", type=Path, metavar="LIST.csv", help="the list (its ledger)")
    where.add_argument("--ledger", type=Path, metavar="FILE", help="a ledger file")
    cancel.add_argument("--reason", required=True, help="why, kept with each payout")
    cancel.set_defaults(run=_cancel)

    forget = psub.add_parser(
        "forget",
        help="stop checking new lists against a ledger that is gone for good",
        description="A treasury remembers the ledgers it paid from, so that a list sent "
        "again under another name is not paid twice. Forget one that is gone for good "
        "(its ids are then no longer checked).",
        formatter_class=fmt,
    )
    forget.add_argument("ledger", metavar="LEDGER", help="the ledger's path, as the error named it")
    forget.add_argument("--wallet", type=Path, required=True, metavar="TREASURY")
    forget.set_defaults(run=_forget)


def ledger_path(list_path: Path) -> Path:
    """Where a list's ledger lives: `LIST.payouts.db` beside `LIST.csv`."""
    stem = list_path.stem if list_path.suffix.lower() == ".csv" else list_path.name
    return list_path.with_name(stem + ".payouts.db")


def _batch_size(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if not 1 <= value <= MAX_BATCH_SIZE:
        raise argparse.ArgumentTypeError(f"must be 1 to {MAX_BATCH_SIZE}")
    return value


def _fail(message: str, code: int = 1) -> SystemExit:
    print(f"farebox: {message}", file=sys.stderr)
    return SystemExit(code)


# ----- send ---------------------------------------------------------------------------


def _send(args: argparse.Namespace) -> None:
    # The engine's warnings (an outage, a refusal) as the command's own lines.
    logging.basicConfig(level=logging.WARNING, format="farebox: %(message)s")
    if not (args.devnet_url or args.arc_url or args.dry_run):
        raise _fail("nothing to pay through: give --devnet-url URL or --arc-url URL (or --dry-run)")
    network = args.network or (None if args.devnet_url or not args.arc_url else "main")
    try:
        payout_list = listfile.read_list(args.list, network=network)
    except listfile.ListError as exc:
        print(f"farebox: {exc}", file=sys.stderr)
        print("farebox: nothing was paid: correct the rows above and run it again", file=sys.stderr)
        raise SystemExit(2) from None
    try:
        treasury = Wallet.open(args.wallet)
    except ClientError as exc:
        raise _fail(str(exc)) from None
    try:
        with treasury.paying_out():
            code = asyncio.run(_run_send(args, payout_list, treasury))
    except WalletBusy as exc:
        raise _fail(str(exc)) from None
    except KeyboardInterrupt:
        print(
            "farebox: interrupted: what was recorded and signed is kept; run the same command "
            "again to pay the rest (nothing is paid twice)",
            file=sys.stderr,
        )
        code = 130
    raise SystemExit(code)


async def _run_send(
    args: argparse.Namespace, payout_list: listfile.PayoutList, treasury: Wallet
) -> int:
    path = args.ledger or ledger_path(args.list)
    ledger = None
    if args.devnet_url:
        await _set_aside_dead_coins(treasury, args.devnet_url)
    try:
        if path.exists():  # a new ledger is made once there is something to pay
            ledger = open_ledger(path, write=not args.dry_run)
        known = {} if ledger is None else {p.id: p for p in await ledger.payouts()}
        if not known:  # a new (or emptied) ledger: nothing may say rows were paid
            _no_result_without_ledger(args.list, path)
        await _not_paid_elsewhere(
            [row.id for row in payout_list.rows if row.id not in known], treasury, path
        )
        plan = _plan(args, payout_list, treasury, known, ledger and ledger.ledger_id)
        if isinstance(plan, int):
            return plan
        if ledger is None:
            ledger = open_ledger(path)
        treasury.remember_ledger(str(path.resolve()))
        return await _pay(args, payout_list, treasury, ledger, plan)
    except LedgerError as exc:
        print(f"farebox: {exc}", file=sys.stderr)
        return 1
    except sqlite3.DatabaseError as exc:
        print(f"farebox: the ledger {path} is damaged ({exc}): restore it", file=sys.stderr)
        return 1
    finally:
        if ledger is not None:
            await ledger.close()


def _no_result_without_ledger(list_path: Path, ledger: Path) -> None:
    """LedgerError when the list's result file records payments but its ledger is
    gone: a new ledger would pay those rows again."""
    result = listfile.result_path(list_path)
    try:
        rows = listfile.read_result(result)
    except listfile.ListError:
        return  # no result file (or not one of ours): nothing says anything was paid
    paid = [r for r in rows if r.outcome.txid is not None]
    if paid:
        raise LedgerError(
            f"{result} records {len(paid)} rows paid or signed, but the ledger {ledger} is "
            "missing or empty: restore it (or give --ledger FILE) so they are not paid again; "
            "if they truly were not, remove the result file"
        )


async def _set_aside_dead_coins(treasury: Wallet, chain_url: str) -> None:
    """Keep out of every batch the treasury coins the chain does not have unspent
    (spent elsewhere, or a devnet restarted since they were funded), so the
    coverage check counts what can really be spent. Only a devnet can be asked
    (ARC cannot say what is unspent)."""
    from gateway.client.receiving import NotProven, unspent

    coins = [c for c in treasury.coins() if c.spendable]
    if not coins:
        return
    try:
        live = await unspent(chain_url, [(c.txid, c.vout, bytes.fromhex(c.script)) for c in coins])
    except NotProven as exc:
        print(f"farebox: cannot check the treasury's coins: {exc}", file=sys.stderr)
        return
    dead = [c.outpoint for c in coins if c.outpoint not in live]
    if dead:
        why = f"not unspent on {chain_url} (spent elsewhere, or the devnet was restarted)"
        treasury.set_aside_coins(dead, why)
        print(
            f"treasury: {len(dead)} coin{'s' if len(dead) != 1 else ''} set aside: {why}; "
            "`farebox wallet coins` lists them"
        )


async def _not_paid_elsewhere(ids: list[str], treasury: Wallet, path: Path) -> None:
    """LedgerError when this treasury recorded any of `ids` (rows new to this
    ledger) in another ledger: the same list under another name, or moved,
    would be paid again."""
    wanted = set(ids)
    if not wanted:
        return
    here = str(path.resolve())
    for other in treasury.payout_ledgers():
        if other == here:
            continue
        if not Path(other).exists():
            raise LedgerError(
                f"this treasury paid from {other}, which is missing: its ids cannot be "
                "checked, so rows recorded there could be paid again; put it back (or give "
                f"--ledger to it), or if it is gone for good: farebox payouts forget {other} "
                "--wallet TREASURY"
            )
        try:
            ledger = open_ledger(other, write=False)
        except LedgerError:
            continue  # not readable now: it cannot be checked, and says so itself when used
        try:
            found = [p.id for p in await ledger.payouts() if p.id in wanted]
        finally:
            await ledger.close()
        if found:
            shown = ", ".join(repr(i) for i in found[:3]) + (" ..." if len(found) > 3 else "")
            raise LedgerError(
                f"this treasury recorded {len(found)} of these ids in another ledger, {other} "
                f"({shown}): to go on with that list give --ledger {other}; if these are "
                "new payouts, give them new ids (ids are unique per treasury)"
            )


@dataclass(frozen=True)
class _Plan:
    new: list[listfile.Row]  # rows never recorded
    skipped: int  # rows an earlier run paid (the network has them)
    count: int  # payouts to pay now: new, owed again, and signed ones to send again


def _plan(
    args: argparse.Namespace,
    payout_list: listfile.PayoutList,
    treasury: Wallet,
    known: dict[str, Payout],
    ledger_id: str | None,
) -> _Plan | int:
    """What this run pays, or the exit status when it must pay nothing (a row
    changed since it was recorded, a treasury too small, a dry run)."""
    problems = _conflicts(payout_list.rows, known)
    if problems:
        print(
            f"farebox: {args.list}: {_n(len(problems), 'row')} differ"
            f"{'s' if len(problems) == 1 else ''} from what was recorded:",
            file=sys.stderr,
        )
        for line in problems[:20]:
            print(f"  {line}", file=sys.stderr)
        print("farebox: nothing was paid: give a changed row a new id", file=sys.stderr)
        return 2
    listed = {row.id for row in payout_list.rows}
    orphans = sorted(p.id for p in known.values() if p.status in _UNPAID and p.id not in listed)
    if orphans:
        shown = ", ".join(repr(i) for i in orphans[:5]) + (" ..." if len(orphans) > 5 else "")
        print(
            f"farebox: the ledger holds {len(orphans)} unpaid payouts that are not in "
            f"{args.list} any more ({shown}): put the rows back, or give --ledger another "
            "file; nothing was paid",
            file=sys.stderr,
        )
        return 2
    new = [row for row in payout_list.rows if row.id not in known]
    again = [p for p in known.values() if p.status in ("owed", "failed")]
    resend = [p for p in known.values() if p.status == "signed"]
    skipped = sum(1 for p in known.values() if p.status in PAID)
    count = len(new) + len(again)
    total = sum(r.satoshis for r in new) + sum(p.satoshis for p in again)
    coins = sum(1 for c in treasury.coins() if c.spendable)
    fees = fee_estimate(count, args.batch_size, treasury.fee_rate, coins) if count else 0
    spendable = treasury.balance().satoshis
    # A batch signed by an earlier run holds its coins; its change comes back
    # once it is broadcast (again), and pays what is left.
    returning = sum(
        p.change.satoshis
        for p in treasury.pending()
        if ledger_id is not None
        and p.change is not None
        and p.purpose is not None
        and p.purpose.what == ledger_id
    )
    print(
        f"{args.list}: {_n(payout_list.count, 'row')}, {payout_list.total} satoshis; "
        f"{skipped} paid before (skipped), {count} to pay: {total} satoshis "
        f"+ at most {fees} in fees ({_batches(count, args.batch_size)})"
        + (f"; {len(resend)} signed before, to send again" if resend else "")
    )
    print(
        f"treasury {treasury.path}: {spendable} satoshis spendable"
        + (f" (and {returning} coming back as change)" if returning else "")
    )
    spendable += returning
    if total + fees > spendable:
        print(
            f"farebox: the treasury cannot cover the list: it needs {total + fees} satoshis "
            f"({total} + fees {fees}), it holds {spendable}; nothing was paid",
            file=sys.stderr,
        )
        return 1
    if args.dry_run:
        print("dry run: nothing was recorded or paid")
        return 0
    return _Plan(new, skipped, count + len(resend))


async def _pay(
    args: argparse.Namespace,
    payout_list: listfile.PayoutList,
    treasury: Wallet,
    ledger: FileLedger,
    plan: _Plan,
) -> int:
    import aiohttp

    from gateway.chain.arc import ArcBroadcaster
    from gateway.client.proofs import refresh_proofs

    chain_url = args.devnet_url or args.arc_url
    broadcaster = ArcBroadcaster(chain_url, api_key=args.arc_api_key, timeout=30.0)
    engine = PayoutEngine(ledger, treasury, broadcaster, batch_size=args.batch_size)
    report = Report()
    try:
        await engine.reconcile()  # refused batches the chain has after all, or never can
        await ledger.retry_failed()
        await engine.record([_payout(row, args.list, treasury) for row in plan.new])
        async with aiohttp.ClientSession() as http:
            # Proofs for mined change keep the BEEFs short; if the chain does
            # not answer, the broadcast below says so.
            with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                await refresh_proofs(treasury, http, chain_url)
        await engine.recover(report)
        if not report.stopped:
            await engine.pay_owed(lambda r: _progress(r, plan.count), report)
        await engine.refresh()
    except InsufficientFunds as exc:
        report.stopped = f"the treasury ran short: {exc}"
    finally:
        await broadcaster.close()
    stored = {p.id: p for p in await ledger.payouts()}
    outcomes = {pid: _outcome(p) for pid, p in stored.items()}
    result = listfile.result_path(args.list)
    try:
        listfile.write_result(result, listfile.result_rows(payout_list.rows, outcomes))
    except OSError as exc:
        print(f"farebox: cannot write {result}: {exc.strerror or exc}", file=sys.stderr)
        _reconcile(report, payout_list, stored, plan.skipped, result, ledger.path)
        print("farebox: the ledger has every outcome: `farebox payouts status`", file=sys.stderr)
        return 1
    return _reconcile(report, payout_list, stored, plan.skipped, result, ledger.path)


def _payout(row: listfile.Row, source: Path, treasury: Wallet) -> Payout:
    campaign = f"list:{source.name}"
    script = row.recipient.script if row.recipient.kind == "address" else None
    return new_payout(
        row.id,
        campaign,
        row.recipient.value,
        row.satoshis,
        treasury=treasury.identity,
        address_script=script,
        memo=row.memo,
    )


def _conflicts(rows: Sequence[listfile.Row], known: dict[str, Payout]) -> list[str]:
    """Rows whose id was recorded before for another recipient or amount."""
    found = []
    for row in rows:
        before = known.get(row.id)
        if before is None:
            continue
        if (before.recipient, before.satoshis) != (row.recipient.value, row.satoshis):
            found.append(
                f"line {row.line}: id {row.id!r} was recorded for {before.recipient}, "
                f"{before.satoshis} satoshis ({before.status}); the list now says "
                f"{row.recipient.value}, {row.satoshis}"
            )
    return found


_UNPAID = ("reserved", "owed", "signed", "failed")


def _n(count: int, word: str) -> str:
    """`count` `word`, plural unless one: "1 row", "2 rows"."""
    return f"{count} {word}{'' if count == 1 else 's'}"


def _batches(count: int, size: int) -> str:
    n = -(-count // size)
    return f"{n} transaction{'s' if n != 1 else ''}"


def _progress(report: Report, of: int) -> None:
    sent = _n(len(report.sent), "transaction")
    print(f"  paid {report.payouts} of {of} payouts ({sent})", flush=True)


def _outcome(payout: Payout) -> listfile.Outcome:
    return listfile.Outcome(payout.status, payout.txid if payout.status != "owed" else None)


def _reconcile(
    report: Report,
    payout_list: listfile.PayoutList,
    stored: dict[str, Payout],
    skipped: int,
    result: Path,
    ledger: Path,
) -> int:
    mine = [stored[row.id] for row in payout_list.rows if row.id in stored]
    paid = [p for p in mine if p.status in PAID]
    failed = [p for p in mine if p.status == "failed"]
    left = [p for p in mine if p.status in ("owed", "signed")]
    txids = sorted({p.txid for p in paid if p.txid})
    print("reconciliation:")
    print(f"  paid this run:  {report.payouts} payouts, {report.satoshis} satoshis, "
          f"{_n(len(report.sent), 'transaction')}, fees {report.fees} satoshis")  # fmt: skip
    print(f"  skipped:        {skipped} paid by an earlier run")
    print(f"  paid in all:    {len(paid)} of {payout_list.count}, "
          f"{sum(p.satoshis for p in paid)} of {payout_list.total} satoshis")  # fmt: skip
    print(f"  failed:         {len(failed)}")
    for p in failed[:20]:
        print(f"    {p.id}: {p.reason}")
    print(f"  not paid yet:   {len(left)}")
    print(f"  transactions:   {len(txids)}")
    for txid in txids:
        print(f"    {txid}")
    print(f"result: {result}")
    print(f"ledger: {ledger}")
    if report.stopped:
        print(f"farebox: stopped: {report.stopped}; run the same command again", file=sys.stderr)
    return 0 if len(paid) == payout_list.count else 1


# ----- status and show ------------------------------------------------------------------


def _open_for_reading(args: argparse.Namespace) -> FileLedger:
    path = args.ledger or ledger_path(args.list)
    try:
        return open_ledger(path, write=False)
    except LedgerError as exc:
        raise _fail(str(exc)) from None


def _status(args: argparse.Namespace) -> None:
    _reading(_run_status(args), args)


def _reading(work: Any, args: argparse.Namespace) -> None:
    """Run a reading command; a damaged ledger is one line, not a traceback."""
    try:
        asyncio.run(work)
    except sqlite3.DatabaseError as exc:
        where = args.ledger or ledger_path(args.list)
        raise _fail(f"the ledger {where} is damaged ({exc}): restore it") from None


async def _run_status(args: argparse.Namespace) -> None:
    ledger = _open_for_reading(args)
    try:
        payouts = await ledger.payouts(status=args.state)
        tally = await ledger.tally()
    finally:
        await ledger.close()
    if args.format == "json":
        for p in payouts:
            print(json.dumps(_public(p)))
        return
    if args.format == "csv":
        writer = csv.writer(sys.stdout, lineterminator="\r\n")
        writer.writerow(["id", "recipient", "satoshis", "status", "txid", "reason"])
        for p in payouts:
            writer.writerow([p.id, p.recipient, p.satoshis, p.status, p.txid or "", p.reason])
        return
    for status in STATUSES:
        if tally.counts.get(status):
            print(
                f"{status:7} {tally.counts[status]:>7} payouts {tally.satoshis[status]:>14} satoshis"
            )
    if not tally.counts:
        print("no payouts recorded")
    for status in STATUSES if args.state is None else (args.state,):
        chosen = [p for p in payouts if p.status == status]
        if not chosen or (status == "mined" and args.state is None):
            continue  # the mined ones are the settled bulk: --state mined lists them
        print(f"\n{status}:")
        for p in chosen[:200]:
            extra = p.txid or ""
            if p.reason:
                extra = f"{extra} ({p.reason})".strip()
            print(f"  {p.id:24} {p.satoshis:>12} {p.recipient}  {extra}")
        if len(chosen) > 200:
            print(f"  ... and {len(chosen) - 200} more (--format csv lists all)")


def _public(p: Payout) -> dict[str, Any]:
    return {
        "id": p.id,
        "campaign": p.campaign,
        "recipient": p.recipient,
        "satoshis": p.satoshis,
        "status": p.status,
        "txid": p.txid,
        "vout": p.vout,
        "reason": p.reason,
        "attempts": p.attempts,
        "memo": p.memo,
    }


def _cancel(args: argparse.Namespace) -> None:
    path = args.ledger or ledger_path(args.list)
    if not path.exists():
        raise _fail(f"{path}: no such ledger")
    try:
        ledger = open_ledger(path)
    except LedgerError as exc:
        raise _fail(str(exc)) from None

    async def run() -> tuple[int, list[str]]:
        try:
            found = {p.id: p.status for p in await ledger.payouts()}
            done = await ledger.cancel(args.ids, f"cancelled: {args.reason}")
            return done, [f"{i}: {found.get(i, 'not in the ledger')}" for i in args.ids
                          if found.get(i) != "failed"]  # fmt: skip
        finally:
            await ledger.close()

    done, skipped = asyncio.run(run())
    print(f"cancelled {_n(done, 'payout')}")
    for line in skipped:
        print(f"  not cancelled (only failed payouts can be): {line}")
    raise SystemExit(0 if not skipped else 1)


def _forget(args: argparse.Namespace) -> None:
    try:
        treasury = Wallet.open(args.wallet)
        if not treasury.forget_ledger(str(Path(args.ledger).resolve())):
            raise _fail(f"{args.wallet} does not remember {args.ledger}")
    except ClientError as exc:
        raise _fail(str(exc)) from None
    print(f"{args.wallet} no longer checks lists against {args.ledger}")


def _show(args: argparse.Namespace) -> None:
    _reading(_run_show(args), args)


async def _run_show(args: argparse.Namespace) -> None:
    ledger = _open_for_reading(args)
    try:
        payout = await ledger.get(args.id)
        batch: Batch | None = None
        if payout is not None and payout.txid:
            batch = await ledger.batch(payout.txid)
    finally:
        await ledger.close()
    if payout is None:
        raise _fail(f"no payout {args.id!r} in {ledger.path}")
    shown = _public(payout)
    if batch is not None:
        shown["internalizeAction"] = remittance(payout, batch)
        shown["beef"] = base64.b64encode(batch.beef).decode()
    print(json.dumps(shown))  # one line, for programs (and for a wallet's internalizeAction)
