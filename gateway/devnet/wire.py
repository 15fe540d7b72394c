"""Reading what ARC's `POST /v1/tx` accepts: raw tx, Extended Format, BEEF.

The framing is done here, strictly (counts checked against what is left, no
trailing bytes), and only raw transactions and BUMPs are handed to bsv-sdk:
its own readers accept trailing junk, read V1 BEEF only
(`Transaction.from_beef`) or raise assorted exception types.
"""

from __future__ import annotations

from dataclasses import dataclass

from bsv import MerklePath, Script, Transaction, TransactionInput, TransactionOutput
from bsv.utils import Reader

BEEF_V1 = 0xEFBE0001
BEEF_V2 = 0xEFBE0002
ATOMIC_BEEF = 0x01010101
EF_MARKER = bytes.fromhex("0000000000ef")
MAX_ITEMS = 10_000  # transactions or BUMPs in one BEEF


class WireError(ValueError):
    """The body is not a transaction in any accepted format."""


@dataclass(frozen=True, slots=True)
class Entry:
    txid: str
    tx: Transaction | None  # None for a BEEF V2 txid-only entry
    path: MerklePath | None  # the entry's proof, if the BEEF gives one


@dataclass(frozen=True, slots=True)
class Submission:
    format: str  # "raw", "ef" or "beef"
    entries: tuple[Entry, ...]  # parents first; raw and EF hold only the subject
    subject: str  # txid the answer is about

    @property
    def subject_entry(self) -> Entry:
        return next(e for e in self.entries if e.txid == self.subject)


def parse_submission(data: bytes) -> Submission:
    """Tell the format from the first bytes, as ARC does, and parse it."""
    if len(data) < 10:
        raise WireError("too short to be a transaction")
    magic = int.from_bytes(data[:4], "little")
    if magic in (BEEF_V1, BEEF_V2, ATOMIC_BEEF):
        return _parse_beef(data)
    if data[4:10] == EF_MARKER:
        tx = _parse_ef(data)
        return Submission("ef", (Entry(tx.txid(), tx, None),), tx.txid())
    tx = _parse_raw(data)
    return Submission("raw", (Entry(tx.txid(), tx, None),), tx.txid())


def _need(value: int | None, what: str) -> int:
    if value is None:
        raise WireError(f"ends inside {what}")
    return value


def _take(reader: Reader, length: int, what: str) -> bytes:
    # bsv's Reader.read returns None, not b"", for a zero-length read.
    if length == 0:
        return b""
    chunk = reader.read(length)
    if chunk is None or len(chunk) != length:
        raise WireError(f"ends inside {what}")
    return chunk


def _count(reader: Reader, what: str, cap: int) -> int:
    n = _need(reader.read_var_int_num(), what)
    left = len(reader.getvalue()) - reader.tell()
    if n > cap or n > left:
        raise WireError(f"implausible {what}: {n}")
    return n


def _read_tx(reader: Reader) -> Transaction:
    start = reader.tell()
    try:
        tx = Transaction.from_reader(reader)
    except Exception as exc:  # bsv raises ValueError, TypeError, IndexError...
        raise WireError(f"malformed transaction: {exc}") from None
    # Round-trip: refuses non-canonical encodings that would change the txid.
    if tx.serialize() != reader.getvalue()[start : reader.tell()]:
        raise WireError("transaction is not canonically encoded")
    return tx


def _parse_raw(data: bytes) -> Transaction:
    reader = Reader(data)
    tx = _read_tx(reader)
    if not reader.eof():
        raise WireError("trailing bytes after the transaction")
    return tx


def _parse_ef(data: bytes) -> Transaction:
    """BRC-30 Extended Format: each input also states the output it spends.

    Those claims land in the inputs' `satoshis`/`locking_script`; the caller
    compares them with the chain.
    """
    reader = Reader(data)
    version = _need(reader.read_uint32_le(), "version")
    _take(reader, 6, "EF marker")
    inputs = [_read_ef_input(reader) for _ in range(_count(reader, "input count", MAX_ITEMS))]
    outputs = []
    for _ in range(_count(reader, "output count", MAX_ITEMS)):
        satoshis = _need(reader.read_uint64_le(), "output amount")
        script = _take(reader, _count(reader, "script length", len(data)), "locking script")
        outputs.append(TransactionOutput(Script(script), satoshis))
    locktime = _need(reader.read_uint32_le(), "lock time")
    if not reader.eof():
        raise WireError("trailing bytes after the transaction")
    return Transaction(inputs, outputs, version=version, locktime=locktime)


def _read_ef_input(reader: Reader) -> TransactionInput:
    txid = _take(reader, 32, "outpoint")[::-1].hex()
    vout = _need(reader.read_uint32_le(), "outpoint")
    unlocking = _take(reader, _count(reader, "script length", 1 << 32), "unlocking script")
    sequence = _need(reader.read_uint32_le(), "sequence")
    satoshis = _need(reader.read_uint64_le(), "previous amount")
    locking = _take(reader, _count(reader, "script length", 1 << 32), "previous script")
    tx_input = TransactionInput(
        source_txid=txid,
        source_output_index=vout,
        unlocking_script=Script(unlocking),
        sequence=sequence,
    )
    tx_input.satoshis = satoshis
    tx_input.locking_script = Script(locking)
    return tx_input


def _parse_beef(data: bytes) -> Submission:
    reader = Reader(data)
    magic = _need(reader.read_uint32_le(), "version")
    subject = None
    if magic == ATOMIC_BEEF:
        subject = _take(reader, 32, "subject txid")[::-1].hex()
        magic = _need(reader.read_uint32_le(), "version")
    if magic not in (BEEF_V1, BEEF_V2):
        raise WireError(f"unknown BEEF version {magic:#010x}")
    bumps = []
    for _ in range(_count(reader, "BUMP count", MAX_ITEMS)):
        try:
            bumps.append(MerklePath.from_reader(reader))
        except Exception as exc:
            raise WireError(f"malformed BUMP: {exc}") from None
    entries = [
        _read_beef_entry(reader, bumps, magic == BEEF_V2)
        for _ in range(_count(reader, "transaction count", MAX_ITEMS))
    ]
    if not reader.eof():
        raise WireError("trailing bytes after the BEEF")
    if not entries or entries[-1].tx is None:
        raise WireError("BEEF must end with a full transaction")
    subject = subject or entries[-1].txid
    if all(e.txid != subject or e.tx is None for e in entries):
        raise WireError("Atomic BEEF does not contain its subject transaction")
    return Submission("beef", tuple(entries), subject)


def _read_beef_entry(reader: Reader, bumps: list[MerklePath], v2: bool) -> Entry:
    if v2:
        kind = _need(reader.read_uint8(), "transaction format")
        if kind == 2:
            return Entry(_take(reader, 32, "txid")[::-1].hex(), None, None)
        if kind not in (0, 1):
            raise WireError(f"unknown BEEF V2 transaction format {kind}")
        index = _need(reader.read_var_int_num(), "BUMP index") if kind == 1 else None
        tx = _read_tx(reader)
    else:
        tx = _read_tx(reader)
        has_bump = _need(reader.read_uint8(), "BUMP flag")
        index = _need(reader.read_var_int_num(), "BUMP index") if has_bump else None
    if index is not None and index >= len(bumps):
        raise WireError(f"BUMP index {index} out of range")
    return Entry(tx.txid(), tx, bumps[index] if index is not None else None)
