"""Real signed transactions for payment tests, without a network.

A "mined" funding transaction gets a genuine BRC-74 merkle path in a
two-transaction block; `Tracker` knows that block's merkle root, like a
headers service would.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from bsv import (
    P2PKH,
    MerklePath,
    PrivateKey,
    PublicKey,
    Transaction,
    TransactionInput,
    TransactionOutput,
)

from gateway.bsv.derivation import payee_key_for_sender


@dataclass
class Tracker:
    roots: dict[int, str] = field(default_factory=dict)
    calls: int = 0

    async def is_valid_root_for_height(self, root: str, height: int) -> bool:
        self.calls += 1
        return self.roots.get(height) == root

    async def current_height(self) -> int:
        return max(self.roots, default=0)


def mined(tx: Transaction, tracker: Tracker, height: int | None = None) -> Transaction:
    """Put `tx` in a block (next to a random sibling) the tracker knows.

    Without a height it goes in a new block on top, so earlier proofs stay valid.
    """
    if height is None:
        height = max(tracker.roots, default=99) + 1
    sibling = os.urandom(32).hex()
    tx.merkle_path = MerklePath(
        height,
        [[{"offset": 0, "hash_str": tx.txid(), "txid": True}, {"offset": 1, "hash_str": sibling}]],
    )
    tracker.roots[height] = tx.merkle_path.compute_root(tx.txid())
    return tx


def funding(
    owner: PrivateKey, satoshis: int, tracker: Tracker, height: int | None = None
) -> Transaction:
    """A confirmed output of `satoshis` to `owner` (its own inputs are never checked)."""
    tx = Transaction(
        [
            TransactionInput(
                source_txid=os.urandom(32).hex(),
                source_output_index=0,
                unlocking_script=P2PKH().lock(owner.address()),
            )
        ],
        [TransactionOutput(P2PKH().lock(owner.address()), satoshis)],
    )
    return mined(tx, tracker, height)


def spend(
    parent: Transaction,
    vout: int,
    owner: PrivateKey,
    outputs: list[tuple[PublicKey | str, int]],
) -> Transaction:
    """Sign a P2PKH spend of parent:vout to (key or address, satoshis) outputs."""
    tx = Transaction(
        [
            TransactionInput(
                source_transaction=parent,
                source_output_index=vout,
                unlocking_script_template=P2PKH().unlock(owner),
            )
        ],
        [
            TransactionOutput(P2PKH().lock(k if isinstance(k, str) else k.address()), sats)
            for k, sats in outputs
        ],
    )
    tx.sign()
    return tx


@dataclass
class Payment:
    tx: Transaction
    payee: PublicKey
    prefix: str
    suffix: str


def pay(
    server: PublicKey,
    client: PrivateKey,
    satoshis: int,
    tracker: Tracker | None,
    *,
    prefix: str = "cHJlZml4",
    suffix: str = "MTcwMDAwMDAwMDAwMA==",
    funds: int = 100_000,
    parent: Transaction | None = None,
) -> Payment:
    if parent is None:
        assert tracker is not None, "a funding transaction needs a tracker to be proven to"
        parent = funding(client, funds, tracker)
    payee = payee_key_for_sender(server, client, prefix, suffix)
    change = parent.outputs[0].satoshis - satoshis - 1
    tx = spend(parent, 0, client, [(payee, satoshis), (client.public_key(), change)])
    return Payment(tx, payee, prefix, suffix)


def atomic_beef(tx: Transaction) -> bytes:
    # BRC-95 framing around bsv-sdk's V1 BEEF. (Re-serialising through
    # bsv.transaction.beef.new_beef_from_bytes would drop the BUMPs and the
    # ancestors of a V1 BEEF: a bsv-sdk trap.)
    return b"\x01\x01\x01\x01" + bytes.fromhex(tx.txid())[::-1] + tx.to_beef()


def beef_of(*txs: Transaction, version: int = 1) -> bytes:
    """A BEEF of exactly these transactions, oldest first: V1 (BRC-62) or V2 (BRC-96)."""
    from bsv.utils import unsigned_to_varint

    bumps: list[MerklePath] = []
    for tx in txs:
        if tx.merkle_path is not None and tx.merkle_path not in bumps:
            bumps.append(tx.merkle_path)
    out = bytearray(bytes([version]) + b"\x00\xbe\xef") + unsigned_to_varint(len(bumps))
    for bump in bumps:
        out += bump.to_binary()
    out += unsigned_to_varint(len(txs))
    for tx in txs:
        proof = (
            b"\x00"
            if tx.merkle_path is None
            else b"\x01" + unsigned_to_varint(bumps.index(tx.merkle_path))
        )
        # V1 puts the proof after the raw transaction, V2 before it.
        out += tx.serialize() + proof if version == 1 else proof + tx.serialize()
    return bytes(out)


def atomic(subject: Transaction, *txs: Transaction) -> bytes:
    return b"\x01\x01\x01\x01" + bytes.fromhex(subject.txid())[::-1] + beef_of(*txs)


def brc121_headers(
    server: str, client: PrivateKey, parent: Transaction, sats: int
) -> tuple[dict[str, str], str]:
    """BRC-121 payment headers paying `sats` from `parent` (a proven coin of
    `client`'s at output 0) to server `server` (hex); and the payment's txid."""
    import base64
    import time

    nonce = "Y2hhaW5raXQ="
    now = str(int(time.time() * 1000))
    p = pay(
        PublicKey(server),
        client,
        sats,
        None,
        parent=parent,
        prefix=nonce,
        suffix=base64.b64encode(now.encode()).decode(),
    )
    headers = {
        "x-bsv-beef": base64.b64encode(atomic(p.tx, parent, p.tx)).decode(),
        "x-bsv-sender": client.public_key().hex(),
        "x-bsv-nonce": nonce,
        "x-bsv-time": now,
        "x-bsv-vout": "0",
    }
    return headers, p.tx.txid()


async def faucet(url: str, key: PrivateKey, sats: int) -> Transaction:
    """A proven coin of `sats` for `key` from the devnet at `url`."""
    import aiohttp

    async with (
        aiohttp.ClientSession() as http,
        http.post(f"{url}/faucet", json={"address": key.address(), "satoshis": sats}) as r,
    ):
        assert r.status == 200, await r.text()
        return Transaction.from_beef(bytes.fromhex((await r.json())["beef"]))
