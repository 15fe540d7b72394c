"""BEEF, read and written: BRC-62 (V1), BRC-96 (V2) and BRC-95 (Atomic BEEF).

A BEEF is a transaction with its unconfirmed ancestry, the proven ancestors
carrying BRC-74 merkle paths (BUMPs). This module is the one reader and the
one writer of that framing, for the gateway, the client and the devnet.

Reading frames the bytes here (every count checked against caps and against
what is left), hands each raw transaction and BUMP to bsv-sdk, and refuses
anything left over at the end: bsv-sdk's own readers accept trailing junk
and, for Atomic BEEF, unrelated extra transactions, and give no bound on
what they walk. `read_entries` gives the framing as it is (the devnet, like
ARC, takes txid-only entries, and a V1 or V2 BEEF may carry several
graphs); `read_beef` is what a payment must be.

Related, for a BEEF about one subject (an Atomic BEEF's named transaction;
for a payment, a V1 or V2 BEEF's last one): the subject, and what the
subject's inputs reach through unproven transactions. A transaction with a
merkle path ends its branch (its own parents are not needed to prove it) and
a txid-only entry can only end one. Anything else is unrelated and refused:
in an Atomic BEEF by `read_entries` (BRC-95), in any payment by `read_beef`.

Writing is V1 (what every reader takes): bsv-sdk's `to_beef()` walks the
ancestry recursively without a memo, writing a shared ancestor once per
path to it, and its `new_beef_from_bytes` drops the BUMPs of a V1 BEEF.

Reading has a fast path for what well-formed BEEF looks like (`_fast_entries`):
it walks the framing over the bytes once, hands bsv-sdk each transaction's
exact bytes, takes its txid from those bytes when they are the canonical
encoding bsv-sdk would write again, and reuses the `MerklePath` read lately
from the same BUMP bytes (a wallet pays many times from one proven
transaction; the path is validated once). At the first thing it does not
expect — truncation, a cap, an unknown kind, the same BUMP twice — it gives
up and the general reader runs on the same bytes, so every refusal is the
general reader's. Treat the `MerklePath`s returned as read-only: they may
be shared between reads.

Errors are `PaymentError`s: "malformed-beef" (status 400), "beef-too-large"
(413), "txid-only-ancestor" and, from the writer, "missing-ancestor" (402).
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

from bsv import MerklePath, Script, Transaction, TransactionInput, TransactionOutput
from bsv.utils import Reader, Writer

from gateway.bsv.ancestry import parents_first, walk_ancestry
from gateway.errors import PaymentError

BEEF_V1 = 0xEFBE0001
BEEF_V2 = 0xEFBE0002
ATOMIC_BEEF = 0x01010101
ATOMIC_PREFIX = ATOMIC_BEEF.to_bytes(4, "little")


@dataclass(frozen=True, slots=True)
class Limits:
    """Caps on what one BEEF may make the reader do (bytes, and counts as declared)."""

    max_bytes: int = 1 << 20
    max_transactions: int = 1000
    max_bumps: int = 1000


@dataclass(frozen=True, slots=True)
class Entry:
    """One transaction of a BEEF, as framed."""

    txid: str
    tx: Transaction | None  # None for a BRC-96 txid-only entry; its BUMP is tx.merkle_path
    raw: bytes  # the transaction's bytes as the BEEF holds them; b"" for a txid-only entry

    @property
    def path(self) -> MerklePath | None:
        return None if self.tx is None else self.tx.merkle_path


@dataclass(frozen=True, slots=True)
class Entries:
    """What `read_entries` found."""

    subject: str  # txid: the Atomic BEEF's subject (a full entry), else the last entry's
    atomic: bool
    entries: tuple[Entry, ...]  # in the BEEF's order, parents first; at least one


@dataclass(slots=True)
class Beef:
    """A payment's BEEF, read by `read_beef`."""

    subject: Transaction  # the payment: the atomic subject, else the last transaction
    transactions: dict[str, Transaction]  # txid → tx, parents linked as source_transaction
    atomic: bool


def _malformed(detail: str) -> PaymentError:
    return PaymentError("malformed-beef", detail, status=400)


def read_entries(data: bytes, limits: Limits = Limits()) -> Entries:
    """The entries of a BEEF V1 or V2, Atomic or not, checking the framing only.

    Raises PaymentError "beef-too-large" beyond `limits`, "malformed-beef"
    for anything that is not exactly one BEEF (trailing bytes included).
    """
    fast = _fast_entries(data, limits)
    if fast is not None:
        subject, bumps, entries = fast
        return _related(subject, bumps, entries)
    return read_entries_general(data, limits)


def read_entries_general(data: bytes, limits: Limits = Limits()) -> Entries:
    """`read_entries` without its fast path: bsv-sdk's readers on every part
    (kept for tests that hold the fast path to it). Raises as `read_entries`."""
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
    subject = None
    if magic == ATOMIC_BEEF:
        raw = reader.read(32)
        if raw is None or len(raw) != 32:  # Reader.read gives None at the end
            raise _malformed("Atomic BEEF ends inside its subject txid")
        subject = raw[::-1].hex()
        magic = reader.read_uint32_le()
    if magic not in (BEEF_V1, BEEF_V2):
        raise _malformed("not BEEF: unknown version bytes")
    try:
        bumps = _read_bumps(reader, data, limits)
        entries = _read_transactions(reader, magic, bumps, data, limits)
    except PaymentError:
        raise
    except Exception as exc:  # bsv-sdk raises ValueError, TypeError, IndexError...
        raise _malformed(f"unreadable BEEF: {type(exc).__name__}") from None
    if reader.tell() != len(data):
        raise _malformed(f"{len(data) - reader.tell()} unexpected bytes after the BEEF")
    return _related(subject, bumps, entries)


def _related(subject: str | None, bumps: list[MerklePath], entries: list[Entry]) -> Entries:
    """The end of reading: every BUMP used, an Atomic BEEF's subject and ancestry only."""
    if not entries:
        raise _malformed("BEEF holds no transaction")
    used = {id(e.tx.merkle_path) for e in entries if e.tx is not None and e.tx.merkle_path}
    if any(id(bump) not in used for bump in bumps):
        raise _malformed("BEEF holds a BUMP (merkle path) no transaction in it uses")
    if subject is None:
        return Entries(entries[-1].txid, False, tuple(entries))
    if all(e.txid != subject or e.tx is None for e in entries):
        raise _malformed("Atomic BEEF does not contain its subject transaction")
    _require_only_ancestry(subject, entries, "Atomic BEEF")
    return Entries(subject, True, tuple(entries))


def read_beef(data: bytes, limits: Limits = Limits()) -> Beef:
    """A payment's BEEF: its subject (the Atomic BEEF's, else the last transaction)
    and the subject's ancestry, nothing else; full transactions only, each once,
    parents linked.

    Raises PaymentError as `read_entries` does, "malformed-beef" for a
    transaction twice or one unrelated to the subject (V1, V2 and Atomic
    alike, txid-only entries included), then "txid-only-ancestor".
    """
    found = read_entries(data, limits)
    if len({entry.txid for entry in found.entries}) != len(found.entries):
        raise _malformed("BEEF holds the same transaction twice")
    if not found.atomic:  # read_entries has checked an Atomic BEEF already
        _require_only_ancestry(found.subject, found.entries, "BEEF")
    by_id: dict[str, Transaction] = {}
    for entry in found.entries:
        if entry.tx is None:
            raise PaymentError(
                "txid-only-ancestor",
                "BEEF has a txid-only entry; a payment must carry full ancestry",
            )
        by_id[entry.txid] = entry.tx
    for tx in by_id.values():
        for tx_input in tx.inputs:
            parent = by_id.get(tx_input.source_txid)
            if parent is not None:
                tx_input.source_transaction = parent
    return Beef(by_id[found.subject], by_id, found.atomic)


def _count(reader: Reader, data: bytes, cap: int, what: str) -> int:
    n = reader.read_var_int_num()
    if n is None:
        raise _malformed(f"BEEF ends before its {what} count")
    if n > cap:
        raise PaymentError(
            "beef-too-large", f"BEEF declares {n} {what}; the limit is {cap}", status=413
        )
    if n > len(data) - reader.tell():
        raise _malformed(f"BEEF declares more {what} than it has bytes")
    return n


def _read_bumps(reader: Reader, data: bytes, limits: Limits) -> list[MerklePath]:
    return [
        MerklePath.from_reader(reader)
        for _ in range(_count(reader, data, limits.max_bumps, "BUMPs"))
    ]


def _read_transactions(
    reader: Reader, version: int, bumps: list[MerklePath], data: bytes, limits: Limits
) -> list[Entry]:
    out = []
    for _ in range(_count(reader, data, limits.max_transactions, "transactions")):
        bump = None
        if version == BEEF_V2:
            # BRC-96 entry: <kind> [<BUMP index> when kind 1] <raw tx>, or <2> <txid>
            kind = reader.read_uint8()
            if kind == 2:
                out.append(_txid_only(reader))
                continue
            if kind not in (0, 1):
                raise _malformed(f"unknown BEEF V2 entry kind {kind}")
            if kind == 1:
                bump = _bump(reader, bumps)
            start = reader.tell()
            tx = Transaction.from_reader(reader)
            end = reader.tell()
        else:
            # BRC-62 entry: <raw tx> <has BUMP> [<BUMP index>]
            start = reader.tell()
            tx = Transaction.from_reader(reader)
            end = reader.tell()
            flag = reader.read_uint8()
            if flag not in (0, 1):
                raise _malformed("bad BUMP flag after a transaction")
            if flag == 1:
                bump = _bump(reader, bumps)
        tx.merkle_path = bump
        out.append(Entry(tx.txid(), tx, data[start:end]))
    return out


def _txid_only(reader: Reader) -> Entry:
    raw = reader.read(32)
    if raw is None or len(raw) != 32:
        raise _malformed("BEEF ends inside a txid-only entry")
    return Entry(raw[::-1].hex(), None, b"")


def _bump(reader: Reader, bumps: list[MerklePath]) -> MerklePath:
    index = reader.read_var_int_num()
    if index is None or index >= len(bumps):
        raise _malformed("transaction points at a BUMP that does not exist")
    return bumps[index]


def _require_only_ancestry(subject: str, entries: Sequence[Entry], what: str) -> None:
    """Refuse an entry the subject's ancestry does not reach (see "Related" above)."""
    by_id = {entry.txid: entry for entry in entries}
    reached = {subject}
    stack = [by_id[subject]]
    while stack:
        entry = stack.pop()
        if entry.tx is None or (entry.path is not None and entry.txid != subject):
            continue  # txid-only or proven: its parents are not needed
        for tx_input in entry.tx.inputs:
            parent = by_id.get(tx_input.source_txid)
            if parent is not None and parent.txid not in reached:
                reached.add(parent.txid)
                stack.append(parent)
    unrelated = [entry.txid for entry in entries if entry.txid not in reached]
    if unrelated:
        raise _malformed(
            f"{what} carries {len(unrelated)} transaction(s) unrelated to its subject "
            f"{subject}, {unrelated[0]} first: neither the subject nor an ancestor it needs"
        )


# ----- the fast path -------------------------------------------------------------------


class _Unusual(Exception):
    """Not what the fast path reads: the general reader decides (and refuses)."""


_PATHS: OrderedDict[bytes, MerklePath] = OrderedDict()  # BUMP bytes -> its path, read lately
_PATHS_KEPT = 512
# The BUMPs kept, by their first bytes (height, levels, first leaf), to find one
# in a BEEF without walking its leaves: reading a BUMP depends on nothing but
# the bytes it reads, so bytes equal to a kept BUMP are that BUMP, to the end.
_PREFIX = 40
_BY_PREFIX: dict[bytes, list[bytes]] = {}
_PATH_BYTES_KEPT = 4096  # longer BUMPs are read each time, not kept


def _varint(data: bytes, pos: int) -> tuple[int, int, bool]:
    """(value, position after, minimal encoding) of the varint at `pos`; _Unusual
    when the bytes end inside it."""
    if pos >= len(data):
        raise _Unusual
    first = data[pos]
    if first < 0xFD:
        return first, pos + 1, True
    size = 2 if first == 0xFD else 4 if first == 0xFE else 8
    end = pos + 1 + size
    if end > len(data):
        raise _Unusual
    value = int.from_bytes(data[pos + 1 : end], "little")
    floor = 0xFD if size == 2 else 0x10000 if size == 4 else 0x100000000
    return value, end, value >= floor


def _fast_entries(
    data: bytes, limits: Limits
) -> tuple[str | None, list[MerklePath], list[Entry]] | None:
    """(Atomic subject or None, BUMPs, entries) as `read_entries_general` reads them,
    or None for anything it would have to think about (it then runs instead)."""
    if not 4 <= len(data) <= limits.max_bytes:
        return None
    try:
        return _fast_framing(data, limits)
    except _Unusual:
        return None
    except Exception:  # bsv-sdk refusing a part: the general reader says how
        return None


def _fast_framing(data: bytes, limits: Limits) -> tuple[str | None, list[MerklePath], list[Entry]]:
    size = len(data)
    magic = int.from_bytes(data[:4], "little")
    pos = 4
    subject = None
    if magic == ATOMIC_BEEF:
        if size < 40:
            raise _Unusual
        subject = data[4:36][::-1].hex()
        magic = int.from_bytes(data[36:40], "little")
        pos = 40
    if magic not in (BEEF_V1, BEEF_V2):
        raise _Unusual
    count, pos, _ = _varint(data, pos)
    if count > limits.max_bumps or count > size - pos:
        raise _Unusual
    bumps: list[MerklePath] = []
    spans: set[bytes] = set()
    for _ in range(count):
        span = _kept_bump(data, pos)
        if span is None:
            span = data[pos : _bump_end(data, pos)]
        end = pos + len(span)
        if span in spans:  # two equal BUMPs are two objects to the general reader
            raise _Unusual
        spans.add(span)
        bumps.append(_path(span))
        pos = end
    count, pos, _ = _varint(data, pos)
    if count > limits.max_transactions or count > size - pos:
        raise _Unusual
    entries: list[Entry] = []
    for _ in range(count):
        bump = None
        if magic == BEEF_V2:
            if pos >= size:
                raise _Unusual
            kind = data[pos]
            pos += 1
            if kind == 2:
                if pos + 32 > size:
                    raise _Unusual
                entries.append(Entry(data[pos : pos + 32][::-1].hex(), None, b""))
                pos += 32
                continue
            if kind not in (0, 1):
                raise _Unusual
            if kind == 1:
                index, pos, _ = _varint(data, pos)
                if index >= len(bumps):
                    raise _Unusual
                bump = bumps[index]
            entry, pos = _fast_transaction(data, pos)
        else:
            entry, pos = _fast_transaction(data, pos)
            if pos >= size or data[pos] not in (0, 1):
                raise _Unusual
            pos += 1
            if data[pos - 1] == 1:
                index, pos, _ = _varint(data, pos)
                if index >= len(bumps):
                    raise _Unusual
                bump = bumps[index]
        assert entry.tx is not None
        entry.tx.merkle_path = bump
        entries.append(entry)
    if pos != size:
        raise _Unusual
    return subject, bumps, entries


def _bump_end(data: bytes, pos: int) -> int:
    """Where the BUMP (BRC-74) at `pos` ends, read as `MerklePath.from_reader` reads it."""
    _, pos, _ = _varint(data, pos)  # block height
    if pos >= len(data):
        raise _Unusual
    levels = data[pos]
    pos += 1
    for _ in range(levels):
        leaves, pos, _ = _varint(data, pos)
        if leaves > len(data) - pos:
            raise _Unusual
        for _ in range(leaves):
            _, pos, _ = _varint(data, pos)  # offset
            if pos >= len(data):
                raise _Unusual
            flags = data[pos]
            pos += 1 if flags & 1 else 33  # a duplicate has no hash
            if pos > len(data):
                raise _Unusual
    return pos


def _kept_bump(data: bytes, pos: int) -> bytes | None:
    """The kept BUMP whose bytes `data` holds at `pos`, if any."""
    for span in _BY_PREFIX.get(data[pos : pos + _PREFIX], ()):
        if data.startswith(span, pos):
            return span
    return None


def _path(span: bytes) -> MerklePath:
    """The MerklePath of exactly these BUMP bytes (validated by bsv-sdk when first read)."""
    path = _PATHS.get(span)
    if path is not None:
        _PATHS.move_to_end(span)
        return path
    path = MerklePath.from_binary(span)
    if _PREFIX <= len(span) <= _PATH_BYTES_KEPT:
        _PATHS[span] = path
        _BY_PREFIX.setdefault(span[:_PREFIX], []).append(span)
        if len(_PATHS) > _PATHS_KEPT:
            old, _ = _PATHS.popitem(last=False)
            same_prefix = _BY_PREFIX[old[:_PREFIX]]
            same_prefix.remove(old)
            if not same_prefix:
                del _BY_PREFIX[old[:_PREFIX]]
    return path


def _fast_transaction(data: bytes, start: int) -> tuple[Entry, int]:
    """The transaction at `start` (an Entry with its merkle path unset) and where it
    ends: the objects bsv-sdk's `Transaction.from_reader` makes of these bytes,
    made straight from them."""
    size = len(data)
    pos = start + 4  # version
    canonical = True
    count, pos, minimal = _varint(data, pos)
    canonical &= minimal
    inputs = []
    for _ in range(count):
        outpoint = pos
        length, pos, minimal = _varint(data, pos + 36)
        canonical &= minimal
        end = pos + length
        if end + 4 > size:
            raise _Unusual
        inputs.append(
            TransactionInput(
                source_txid=data[outpoint : outpoint + 32][::-1].hex(),
                source_output_index=int.from_bytes(data[outpoint + 32 : outpoint + 36], "little"),
                unlocking_script=Script(data[pos:end]),
                sequence=int.from_bytes(data[end : end + 4], "little"),
            )
        )
        pos = end + 4
    count, pos, minimal = _varint(data, pos)
    canonical &= minimal
    outputs = []
    for _ in range(count):
        satoshis = pos
        length, pos, minimal = _varint(data, pos + 8)
        canonical &= minimal
        end = pos + length
        if end > size:
            raise _Unusual
        outputs.append(
            TransactionOutput(
                locking_script=Script(data[pos:end]),
                satoshis=int.from_bytes(data[satoshis : satoshis + 8], "little"),
            )
        )
        pos = end
    end = pos + 4  # locktime
    if end > size:
        raise _Unusual
    tx = Transaction(
        inputs,
        outputs,
        version=int.from_bytes(data[start : start + 4], "little"),
        locktime=int.from_bytes(data[pos:end], "little"),
    )
    raw = data[start:end]
    if canonical:
        # bsv-sdk's txid hashes the transaction written again, which is these
        # very bytes when every count is minimally encoded: skip writing it.
        digest = hashlib.sha256(hashlib.sha256(raw).digest()).digest()
        tx._cached_hash = digest
        tx._cached_txid = digest[::-1].hex()
    return Entry(tx.txid(), tx, raw), end


def split_atomic(data: bytes) -> tuple[str | None, bytes]:
    """(subject txid, the BEEF inside) of an Atomic BEEF; (None, `data`) for anything else.

    Only the 36-byte BRC-95 prefix is looked at; what follows is not read."""
    if not data.startswith(ATOMIC_PREFIX):
        return None, data
    return data[4:36][::-1].hex(), data[36:]


# ----- writing ------------------------------------------------------------------------


def write_beef(txs: Sequence[Transaction], *, atomic: bool = False) -> bytes:
    """A V1 BEEF (BRC-62) of exactly `txs`, in this order (parents first); with
    `atomic`, framed as an Atomic BEEF (BRC-95) about the last of them.

    A transaction's `merkle_path` is written as its BUMP, one BUMP per block
    where the paths combine.
    """
    bumps: list[tuple[MerklePath, list[str]]] = []
    index_of: dict[str, int] = {}
    for tx in txs:
        if tx.merkle_path is not None:
            index_of[tx.txid()] = _bump_for(bumps, tx.merkle_path, tx.txid())
    writer = Writer()
    if atomic:
        writer.write(ATOMIC_PREFIX)
        writer.write(bytes.fromhex(txs[-1].txid())[::-1])
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


def beef_of(tx: Transaction, *, atomic: bool = False) -> bytes:
    """V1 BEEF proving `tx` (Atomic BEEF with `atomic`): it, its unconfirmed
    ancestors and the proven transactions they spend, each once.

    Raises PaymentError "missing-ancestor" when an unconfirmed transaction's
    parent is not linked as its input's `source_transaction`.
    """
    return write_beef(parents_first(walk_ancestry(tx)), atomic=atomic)


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
