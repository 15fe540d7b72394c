"""Reading what ARC's `POST /v1/tx` accepts: raw tx, Extended Format, BEEF.

The framing is done strictly (counts checked against what is left, no
trailing bytes), here for raw transactions and Extended Format and by
`gateway.bsv.beef` for BEEF; only raw transactions and BUMPs are handed to
bsv-sdk: its own readers accept trailing junk, read V1 BEEF only
(`Transaction.from_beef`) or raise assorted exception types.
"""

from __future__ import annotations

from dataclasses import dataclass

from bsv import Script, Transaction, TransactionInput, TransactionOutput
from bsv.utils import Reader

from gateway.bsv.beef import ATOMIC_BEEF, BEEF_V1, BEEF_V2, Entry, Limits, read_entries
from gateway.errors import PaymentError

EF_MARKER = bytes.fromhex("0000000000ef")
MAX_ITEMS = 10_000  # inputs or outputs of one transaction
# Transactions or BUMPs in one BEEF; the HTTP layer bounds the bytes.
LIMITS = Limits(max_bytes=1 << 62, max_transactions=MAX_ITEMS, max_bumps=MAX_ITEMS)


class WireError(ValueError):
    """The body is not a transaction in any accepted format."""


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
        return Submission("ef", (Entry(tx.txid(), tx, tx.serialize()),), tx.txid())
    tx = _parse_raw(data)
    return Submission("raw", (Entry(tx.txid(), tx, data),), tx.txid())


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
    """BEEF through gateway.bsv.beef's reader, taking txid-only entries as ARC does."""
    try:
        found = read_entries(data, LIMITS)
    except PaymentError as exc:
        raise WireError(exc.detail) from None
    for entry in found.entries:
        if entry.tx is not None and entry.tx.serialize() != entry.raw:
            raise WireError("transaction is not canonically encoded")
    if found.entries[-1].tx is None:
        raise WireError("BEEF must end with a full transaction")
    return Submission("beef", found.entries, found.subject)
