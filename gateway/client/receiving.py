"""Checking a transaction someone says pays this wallet, before its coins count.

A BEEF handed over (`farebox wallet receive --beef`) is only bytes: it could
hold an unsigned transaction, or a merkle path to a block that never was.
It counts once its unconfirmed transactions are well formed and validly
signed (the same checks a gateway runs on a payment, payments/verify.py)
and every merkle root it rests on is one the wallet's chain knows.
"""

from __future__ import annotations

import aiohttp

from gateway.bsv.ancestry import walk_ancestry
from gateway.bsv.beef import Limits, read_beef
from gateway.chain import ChainError
from gateway.chain.headers import DevnetTracker
from gateway.chain.woc import WhatsOnChain
from gateway.client.errors import ClientError
from gateway.errors import PaymentError
from gateway.payments.verify import check_roots, check_scripts, check_structure


class NotProven(ClientError):
    """A transaction that does not prove what it claims; nothing was recorded."""


async def check_received(beef: bytes, txid: str, chain_url: str) -> None:
    """NotProven unless `beef` holds `txid` with signed unconfirmed ancestry
    and merkle roots the chain at `chain_url` (a devnet) knows."""
    try:
        parsed = read_beef(beef, Limits())
        tx = parsed.transactions.get(txid)
        if tx is None:
            raise NotProven(f"the BEEF does not hold {txid}")
        ancestry = walk_ancestry(tx)
        for unconfirmed in ancestry.unconfirmed:
            check_structure(unconfirmed)
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as http:
            await check_roots(ancestry.proven, DevnetTracker(chain_url, http))
        for unconfirmed in ancestry.unconfirmed:
            await check_scripts(unconfirmed)
    except PaymentError as exc:
        raise NotProven(f"{txid} is not proven ({exc.reason}): {exc.detail}") from None
    except ChainError as exc:
        raise NotProven(
            f"cannot check {txid}'s proof against {chain_url} ({exc.kind}): {exc}"
        ) from None


async def unspent(chain_url: str, wanted: list[tuple[str, int, bytes]]) -> set[tuple[str, int]]:
    """Which of `wanted` (txid, vout, locking script) the chain at `chain_url`
    (a devnet, or a WhatsOnChain-style API) has unspent; NotProven if it
    cannot be asked."""
    chain = WhatsOnChain(chain_url)
    found: set[tuple[str, int]] = set()
    try:
        for script in {s for _, _, s in wanted}:
            found.update((u.txid, u.vout) for u in await chain.unspent(script))
    except ChainError as exc:
        raise NotProven(f"cannot ask {chain_url} what is unspent ({exc.kind}): {exc}") from None
    finally:
        await chain.close()
    return {(t, v) for t, v, _ in wanted if (t, v) in found}
