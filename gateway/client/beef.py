"""BEEF as a paying wallet writes it: V1 (BRC-62) and Atomic BEEF (BRC-95).

The framing is written here. bsv-sdk's `to_beef()` walks the ancestry
recursively without a memo, writing a shared ancestor once per path to it,
and its `new_beef_from_bytes` drops the BUMPs of a V1 BEEF. Reading goes
through the gateway's strict reader, so the wallet stores only what the
gateway would accept.
"""

from __future__ import annotations

from collections.abc import Sequence

from bsv import MerklePath, Transaction
from bsv.utils import Writer

from gateway.bsv.beef import Limits, read_beef
from gateway.client.errors import WalletError
from gateway.payments.errors import PaymentError

BEEF_V1 = 0xEFBE0001
ATOMIC = 0x01010101


def ancestry(tx: Transaction) -> list[Transaction]:
    """`tx`, its unproven ancestors and the proven ones they spend: parents first, each once.

    Iterative (no recursion limit) and memoised (a diamond costs one visit
    per transaction). A transaction with a merkle path ends its branch: its
    own parents are not needed to prove it.
    """
    order: list[Transaction] = []
    seen: set[str] = set()
    stack: list[tuple[Transaction, bool]] = [(tx, False)]
    while stack:
        current, parents_done = stack.pop()
        if parents_done:
            order.append(current)
            continue
        txid = current.txid()
        if txid in seen:
            continue
        seen.add(txid)
        stack.append((current, True))
        if current.merkle_path is not None:
            continue
        for tx_input in current.inputs:
            parent = tx_input.source_transaction
            if parent is None:
                raise WalletError(f"{txid} spends {tx_input.source_txid}, which the wallet lacks")
            stack.append((parent, False))
    return order


def _bump_for(bumps: list[tuple[MerklePath, list[str]]], path: MerklePath, txid: str) -> int:
    """Index of the BUMP that proves `txid`; one BUMP per block where they combine."""
    for index, (bump, txids) in enumerate(bumps):
        if bump.block_height != path.block_height:
            continue
        try:
            merged = MerklePath.from_binary(bump.to_binary())
            merged.combine(MerklePath.from_binary(path.to_binary()))
            root = merged.compute_root(txid)
            if all(merged.compute_root(t) == root for t in txids):
                bumps[index] = (merged, [*txids, txid])
                return index
        except Exception:  # bsv-sdk raises assorted types; separate BUMPs are valid too
            pass
    bumps.append((path, [txid]))
    return len(bumps) - 1


def beef_v1(txs: Sequence[Transaction]) -> bytes:
    """A V1 BEEF of exactly these transactions, in this order (parents first)."""
    bumps: list[tuple[MerklePath, list[str]]] = []
    index_of: dict[str, int] = {}
    for tx in txs:
        if tx.merkle_path is not None:
            index_of[tx.txid()] = _bump_for(bumps, tx.merkle_path, tx.txid())
    writer = Writer()
    writer.write_uint32_le(BEEF_V1)
    writer.write_var_int_num(len(bumps))
    for bump, _ in bumps:
        writer.write(bump.to_binary())
    writer.write_var_int_num(len(txs))
    for tx in txs:
        writer.write(tx.serialize())
        index = index_of.get(tx.txid())
        if index is None:
            writer.write_uint8(0)
        else:
            writer.write_uint8(1)
            writer.write_var_int_num(index)
    return writer.to_bytes()


def beef_of(tx: Transaction) -> bytes:
    """V1 BEEF proving `tx`: it and its ancestry back to mined transactions."""
    return beef_v1(ancestry(tx))


def atomic_beef(tx: Transaction) -> bytes:
    """BRC-95: `01010101`, the subject txid (wire byte order), then the BEEF."""
    writer = Writer()
    writer.write_uint32_le(ATOMIC)
    writer.write(bytes.fromhex(tx.txid())[::-1])
    return writer.to_bytes() + beef_of(tx)


def transaction_from_beef(beef: bytes, txid: str) -> Transaction:
    """The transaction `txid` out of a BEEF, its parents linked as source transactions."""
    try:
        parsed = read_beef(beef, Limits(max_bytes=16 << 20, max_transactions=10_000))
    except PaymentError as exc:
        raise WalletError(f"unreadable BEEF for {txid}: {exc.detail}") from None
    tx = parsed.transactions.get(txid)
    if tx is None:
        raise WalletError(f"the BEEF stored for {txid} does not contain it")
    return tx


def unproven(tx: Transaction) -> list[Transaction]:
    """The transactions in `tx`'s ancestry (itself included) that lack a merkle path."""
    return [t for t in ancestry(tx) if t.merkle_path is None]
