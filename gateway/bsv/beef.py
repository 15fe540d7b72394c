"""Reading a payment's BEEF strictly: Atomic BEEF (BRC-95), BEEF V1 and V2.

bsv-sdk's own readers accept trailing junk and, for Atomic BEEF, unrelated
extra transactions, and give no bound on what they walk. This reader frames
the bytes itself (every count checked against caps and against what is left),
hands each raw transaction and BUMP to bsv-sdk, and refuses anything left
over at the end.
"""

from __future__ import annotations

from dataclasses import dataclass

from bsv import MerklePath, Transaction
from bsv.utils import Reader

from gateway.payments.errors import PaymentError

BEEF_V1 = 0xEFBE0001
BEEF_V2 = 0xEFBE0002
ATOMIC = 0x01010101


@dataclass(frozen=True, slots=True)
class Limits:
    max_bytes: int = 1 << 20
    max_transactions: int = 1000
    max_bumps: int = 1000


@dataclass(slots=True)
class Beef:
    subject: Transaction  # the payment: the atomic subject, else the last transaction
    transactions: dict[str, Transaction]  # txid → tx, parents linked as source_transaction
    atomic: bool


def _malformed(detail: str) -> PaymentError:
    return PaymentError("malformed-beef", detail, status=400)


def read_beef(data: bytes, limits: Limits = Limits()) -> Beef:
    if len(data) > limits.max_bytes:
        raise PaymentError(
            "beef-too-large",
            f"BEEF is {len(data)} bytes; the limit is {limits.max_bytes}",
            status=413,
        )
    if len(data) < 4:
        raise _malformed("too short to be BEEF")
    reader = Reader(data)
    magic = reader.read_uint32_le()
    subject_txid = None
    if magic == ATOMIC:
        raw = reader.read(32)
        if len(raw) != 32:
            raise _malformed("Atomic BEEF ends inside its subject txid")
        subject_txid = raw[::-1].hex()
        magic = reader.read_uint32_le()
    if magic not in (BEEF_V1, BEEF_V2):
        raise _malformed("not BEEF: unknown version bytes")
    try:
        bumps = _read_bumps(reader, len(data), limits)
        txs = _read_transactions(reader, magic, bumps, len(data), limits)
    except PaymentError:
        raise
    except Exception as exc:  # bsv-sdk raises ValueError, TypeError, IndexError...
        raise _malformed(f"unreadable BEEF: {type(exc).__name__}") from None
    if reader.tell() != len(data):
        raise _malformed(f"{len(data) - reader.tell()} unexpected bytes after the BEEF")
    if not txs:
        raise _malformed("BEEF holds no transaction")
    by_id = {tx.txid(): tx for tx in txs}
    if len(by_id) != len(txs):
        raise _malformed("BEEF holds the same transaction twice")
    for tx in txs:
        for tx_input in tx.inputs:
            parent = by_id.get(tx_input.source_txid)
            if parent is not None:
                tx_input.source_transaction = parent
    if subject_txid is None:
        return Beef(txs[-1], by_id, atomic=False)
    subject = by_id.get(subject_txid)
    if subject is None:
        raise _malformed("Atomic BEEF does not contain its subject transaction")
    _require_only_ancestry(subject, by_id)
    return Beef(subject, by_id, atomic=True)


def _count(reader: Reader, size: int, cap: int, what: str) -> int:
    n = reader.read_var_int_num()
    if n is None:
        raise _malformed(f"BEEF ends before its {what} count")
    if n > cap:
        raise PaymentError(
            "beef-too-large", f"BEEF declares {n} {what}; the limit is {cap}", status=413
        )
    if n > size - reader.tell():
        raise _malformed(f"BEEF declares more {what} than it has bytes")
    return n


def _read_bumps(reader: Reader, size: int, limits: Limits) -> list[MerklePath]:
    return [
        MerklePath.from_reader(reader)
        for _ in range(_count(reader, size, limits.max_bumps, "BUMPs"))
    ]


def _read_transactions(
    reader: Reader, version: int, bumps: list[MerklePath], size: int, limits: Limits
) -> list[Transaction]:
    out = []
    for _ in range(_count(reader, size, limits.max_transactions, "transactions")):
        bump = None
        if version == BEEF_V2:
            # BRC-96 entry: <kind> [<BUMP index> when kind 1] <raw tx>
            kind = reader.read_uint8()
            if kind == 2:
                raise PaymentError(
                    "txid-only-ancestor",
                    "BEEF has a txid-only entry; a payment must carry full ancestry",
                )
            if kind not in (0, 1):
                raise _malformed(f"unknown BEEF V2 entry kind {kind}")
            if kind == 1:
                bump = _bump(reader, bumps)
            tx = Transaction.from_reader(reader)
        else:
            # BRC-62 entry: <raw tx> <has BUMP> [<BUMP index>]
            tx = Transaction.from_reader(reader)
            flag = reader.read_uint8()
            if flag not in (0, 1):
                raise _malformed("bad BUMP flag after a transaction")
            if flag == 1:
                bump = _bump(reader, bumps)
        tx.merkle_path = bump
        out.append(tx)
    return out


def _bump(reader: Reader, bumps: list[MerklePath]) -> MerklePath:
    index = reader.read_var_int_num()
    if index is None or index >= len(bumps):
        raise _malformed("transaction points at a BUMP that does not exist")
    return bumps[index]


def _require_only_ancestry(subject: Transaction, by_id: dict[str, Transaction]) -> None:
    # BRC-95: an Atomic BEEF is the subject and its ancestors, nothing else.
    seen = {subject.txid()}
    stack = [subject]
    while stack:
        tx = stack.pop()
        if tx.merkle_path is not None and tx is not subject:
            continue
        for tx_input in tx.inputs:
            parent = tx_input.source_transaction
            if parent is not None and parent.txid() not in seen:
                seen.add(parent.txid())
                stack.append(parent)
    if len(seen) != len(by_id):
        raise _malformed("Atomic BEEF carries transactions unrelated to its subject")
