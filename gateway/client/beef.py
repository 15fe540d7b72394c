"""BEEF as the wallet reads and writes it: `gateway.bsv.beef`, with the wallet's errors.

Coins are stored as V1 BEEF (BRC-62), payments leave as Atomic BEEF
(BRC-95). Reading goes through the gateway's own strict reader, so the
wallet keeps only what a gateway would accept. Every function raises
WalletError, never the PaymentError the shared code speaks.
"""

from __future__ import annotations

from bsv import Transaction

from gateway.bsv import beef as bsv_beef
from gateway.bsv.ancestry import walk_ancestry
from gateway.client.errors import WalletError
from gateway.errors import PaymentError

# A wallet's own coins may carry long unconfirmed chains: larger than a payment's caps.
LIMITS = bsv_beef.Limits(max_bytes=16 << 20, max_transactions=10_000)


def beef_of(tx: Transaction) -> bytes:
    """V1 BEEF proving `tx`: it and its ancestry back to mined transactions."""
    try:
        return bsv_beef.beef_of(tx)
    except PaymentError as exc:
        raise WalletError(exc.detail) from None


def atomic_beef(tx: Transaction) -> bytes:
    """The same as an Atomic BEEF (BRC-95) about `tx`: how a payment is sent."""
    try:
        return bsv_beef.beef_of(tx, atomic=True)
    except PaymentError as exc:
        raise WalletError(exc.detail) from None


def transaction_from_beef(beef: bytes, txid: str) -> Transaction:
    """The transaction `txid` out of a BEEF, its parents linked as source transactions."""
    try:
        parsed = bsv_beef.read_beef(beef, LIMITS)
    except PaymentError as exc:
        raise WalletError(f"unreadable BEEF for {txid}: {exc.detail}") from None
    tx = parsed.transactions.get(txid)
    if tx is None:
        raise WalletError(f"the BEEF stored for {txid} does not contain it")
    return tx


def unproven(tx: Transaction) -> list[Transaction]:
    """`tx` (unless it is mined) and its ancestors that lack a merkle path, `tx` first."""
    try:
        return walk_ancestry(tx).unconfirmed
    except PaymentError as exc:
        raise WalletError(exc.detail) from None
