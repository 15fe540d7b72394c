"""A transaction's unconfirmed ancestry: what a BEEF (BRC-62) carries to prove it.

An unconfirmed transaction is proven by the transactions it spends: each is
either proven itself, by a BRC-74 merkle path (it is in a block, so its own
parents are not needed), or unconfirmed and proven the same way.
`walk_ancestry` is the one walk over that graph, for the gateway checking a
payment, the client and the devnet writing BEEF alike: breadth-first with a
memo, so a diamond-shaped ancestry costs one visit per transaction (bsv-sdk's
recursion doubles per level), and capped when given `AncestryLimits`.
`parents_first` puts what it found in the order a BEEF lists it.

Parents are followed through `TransactionInput.source_transaction`, as
`gateway.bsv.beef.read_beef` links them and as bsv-sdk's own code does.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from bsv import Transaction

from gateway.errors import PaymentError


@dataclass(frozen=True, slots=True)
class AncestryLimits:
    """Caps on the work one walk may cause (what a payment's BEEF may ask of the gateway)."""

    max_unconfirmed: int = 100  # unconfirmed transactions, subject included
    max_depth: int = 25  # generations, counted breadth-first from the subject
    max_inputs: int = 1000  # inputs (each a script check), summed over unconfirmed transactions
    max_hashed: int = 8 * 1024 * 1024  # bytes the signature checks may hash (inputs x tx size)


@dataclass(frozen=True, slots=True)
class Ancestry:
    """A walk's finds, each transaction once."""

    unconfirmed: list[Transaction]  # the subject first (unless it is proven), then breadth-first
    proven: list[Transaction]  # proven transactions the unconfirmed ones spend (or the subject)


def has_merkle_path(tx: Transaction) -> bool:
    """Proven: `tx` carries the BRC-74 merkle path of the block it is in."""
    return tx.merkle_path is not None


def walk_ancestry(
    subject: Transaction,
    limits: AncestryLimits | None = None,
    *,
    proven: Callable[[Transaction], bool] = has_merkle_path,
) -> Ancestry:
    """`subject`'s unconfirmed ancestors and the proven transactions they spend.

    `proven` tells where a branch ends (the devnet, which knows what it
    mined, passes its own test). Raises PaymentError "missing-ancestor" when
    an unconfirmed transaction spends one that is not linked, and with
    `limits` "ancestry-too-deep" (more than `max_depth` generations from the
    subject, the proven transactions the walk ends at counted as one) or
    "ancestry-too-large".
    """
    unconfirmed: list[Transaction] = []
    found_proven: list[Transaction] = []
    seen: set[str] = {subject.txid()}
    level = [subject]
    depth = 0
    inputs = 0
    while level:
        depth += 1
        if limits is not None and depth > limits.max_depth:
            raise PaymentError(
                "ancestry-too-deep", f"more than {limits.max_depth} unconfirmed generations"
            )
        following = []
        for tx in level:
            if proven(tx):
                found_proven.append(tx)
                continue
            unconfirmed.append(tx)
            inputs += len(tx.inputs)
            if limits is not None:
                _check_size(limits, len(unconfirmed), inputs)
            for index, tx_input in enumerate(tx.inputs):
                parent = tx_input.source_transaction
                if parent is None:
                    raise PaymentError(
                        "missing-ancestor",
                        f"input {index} of {tx.txid()} spends {tx_input.source_txid}, which the BEEF lacks",
                    )
                if parent.txid() not in seen:
                    seen.add(parent.txid())
                    following.append(parent)
        level = following
    return Ancestry(unconfirmed, found_proven)


def _check_size(limits: AncestryLimits, unconfirmed: int, inputs: int) -> None:
    if inputs > limits.max_inputs:
        raise PaymentError(
            "ancestry-too-large", f"more than {limits.max_inputs} unconfirmed inputs to check"
        )
    if unconfirmed > limits.max_unconfirmed:
        raise PaymentError(
            "ancestry-too-large", f"more than {limits.max_unconfirmed} unconfirmed ancestors"
        )


def parents_first(ancestry: Ancestry) -> list[Transaction]:
    """Every transaction of `ancestry`, each after all it spends: the order of a BEEF.

    The proven ones first (they spend nothing the BEEF holds), then the
    unconfirmed ones, the subject last: a transaction is placed once every
    transaction spending it is (Kahn's algorithm, from the subject down).
    """
    proven = {tx.txid() for tx in ancestry.proven}
    unplaced: dict[str, int] = {}  # txid -> how many transactions spending it are not placed
    for tx in ancestry.unconfirmed:
        for txid in _parents(tx):
            unplaced[txid] = unplaced.get(txid, 0) + 1
    placed: list[Transaction] = []  # each after all that spend it; reversed at the end
    ready = ancestry.unconfirmed[:1]
    while ready:
        tx = ready.pop()
        placed.append(tx)
        for txid, parent in _parents(tx).items():
            unplaced[txid] -= 1
            if unplaced[txid] == 0 and txid not in proven:
                ready.append(parent)
    return [*ancestry.proven, *reversed(placed)]


def _parents(tx: Transaction) -> dict[str, Transaction]:
    """The transactions `tx` spends, by txid, each once (all linked: walked already)."""
    parents = (i.source_transaction for i in tx.inputs)
    return {parent.txid(): parent for parent in parents if parent is not None}
