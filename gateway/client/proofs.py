"""Fresh merkle proofs for the wallet's coins, from an ARC-compatible service.

A change coin is proven by the BEEF of the payment that made it, which
carries every unconfirmed ancestor. Paying from change again and again
would grow that chain without end, until gateways refuse it (Farebox caps
unconfirmed ancestry at 25 generations). Once a transaction is mined, ARC's
`GET /v1/tx/{txid}` gives its merkle path and the BEEF shrinks back to one
proven transaction.
"""

from __future__ import annotations

import logging
from typing import Any

import aiohttp
from bsv import MerklePath

from gateway.client.wallet import Wallet

log = logging.getLogger("farebox.client")

MAX_LOOKUPS = 50
SEEN = frozenset({"ACCEPTED_BY_NETWORK", "SEEN_ON_NETWORK", "MINED"})


async def _status(http: aiohttp.ClientSession, chain_url: str, txid: str) -> dict[str, Any]:
    """ARC's view of a transaction; {} when it does not know it."""
    url = f"{chain_url.rstrip('/')}/v1/tx/{txid}"
    async with http.get(url, timeout=aiohttp.ClientTimeout(total=5)) as resp:
        if resp.status != 200:
            return {}
        body = await resp.json(content_type=None)
    return body if isinstance(body, dict) else {}


async def mined_path(http: aiohttp.ClientSession, chain_url: str, txid: str) -> MerklePath | None:
    """The merkle path of a mined transaction, None if not mined (or not known)."""
    body = await _status(http, chain_url, txid)
    path_hex = body.get("merklePath")
    if body.get("txStatus") != "MINED" or not isinstance(path_hex, str) or not path_hex:
        return None
    try:
        path = MerklePath.from_hex(path_hex)
        path.compute_root(txid)  # raises unless the path holds this txid
    except Exception:  # bsv-sdk raises assorted types for a bad path
        return None
    return path


async def settle_seen(wallet: Wallet, http: aiohttp.ClientSession, chain_url: str) -> int:
    """Count the coins of payments in flight that the network has as spent (their
    change is spendable), whatever the gateway says; such a payment stays
    pending for what it buys until the gateway answers it (Wallet.seen_on_chain).

    What the network does not know stays reserved: it may still arrive.
    """
    settled = 0
    for pending in [p for p in wallet.pending() if not p.on_chain][:MAX_LOOKUPS]:
        if (await _status(http, chain_url, pending.txid)).get("txStatus") in SEEN:
            wallet.seen_on_chain(pending.txid)
            settled += 1
    return settled


async def refresh_proofs(wallet: Wallet, http: aiohttp.ClientSession, chain_url: str) -> int:
    """Replace unconfirmed ancestry by merkle paths where mined; best effort.

    Payments left in flight (a connection lost mid-payment) that the
    network has seen are settled first.

    Returns the number of coins whose BEEF got shorter. A service that cannot
    be reached changes nothing: the old BEEF is still a valid proof.
    """
    paths: dict[str, MerklePath] = {}
    try:
        await settle_seen(wallet, http, chain_url)
        for txid in wallet.unproven_txids()[:MAX_LOOKUPS]:
            path = await mined_path(http, chain_url, txid)
            if path is not None:
                paths[txid] = path
    except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
        log.debug("no fresh proofs from %s: %s", chain_url, exc)
    return wallet.add_proofs(paths) if paths else 0
