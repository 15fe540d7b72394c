"""Benefit lists: reading `LIST.csv` whole before paying, writing `LIST.result.csv`.

The list (issue 15, point 3) is UTF-8 CSV (RFC 4180: a byte-order mark, CRLF
or LF, quoted fields spanning lines are all fine) whose first line is a
header naming the columns `id`, `recipient`, `satoshis` and optionally
`memo`, in any order and any case, spaces around names ignored. Every row:

- `id`: the row's idempotency key (paid at most once, whatever the runs):
  1 to 128 characters, no spaces at its ends, no control or invisible
  formatting characters, unique in the file; compared (and kept) in Unicode
  NFC, so an editor that saves accents decomposed makes no new ids.
- `recipient`: a Base58Check P2PKH address (`1…` mainnet, `m…`/`n…` testnet)
  or a compressed secp256k1 public key in hex (`02`/`03` + 64 hex digits,
  any case), which must be a point on the curve. Paid P2PKH either way.
- `satoshis`: a positive whole number in the digits 0-9 only: no sign,
  point, exponent, separator or spaces; at most 21,000,000 BSV.
- `memo`: free text for people (at most 1000 characters), never paid on.

Rows whose fields are all empty (`,,,` as spreadsheets export) are skipped.
The network is the caller's to pass: `network=None` accepts addresses of
either network (for the devnet, which pays scripts whatever their address's
form; `farebox wallet address` prints the mainnet one); `"main"` or `"test"`
refuses an address of the other one as the typo it is — the convention of
`custody.sweep.treasury_script` and `farebox sweep`. A key suits every network.

Nothing is returned unless the whole file is good: every problem is collected
with the line an editor shows (a row's first line when quoted fields span
lines) and the column, and one `ListError` lists them, so the command can
print it and pay nothing.
"""

from __future__ import annotations

import csv
import io
import os
import re
import tempfile
import unicodedata
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from bsv import PublicKey
from bsv.constants import Network
from bsv.utils import decode_address

from gateway.bsv.derivation import p2pkh_script

MAX_BYTES = 32 * 1024 * 1024  # a list file's size (characters when given text)
MAX_ROWS = 100_000  # payouts in one list: split a longer one
MAX_ID_LENGTH = 128
MAX_MEMO_LENGTH = 1000
MAX_SATOSHIS = 21_000_000 * 100_000_000  # every coin there will ever be
SHOWN = 20  # problems a ListError's message lists
KEPT = 1000  # problems a ListError keeps; it counts them all

COLUMNS = ("id", "recipient", "satoshis", "memo")
REQUIRED = COLUMNS[:3]
RESULT_COLUMNS = ("id", "recipient", "satoshis", "status", "txid")
STATUSES = ("owed", "signed", "sent", "seen", "mined", "failed", "cancelled", "skipped")
# Statuses that need a txid; owed has none. `signed`: in a transaction whose
# broadcast is not confirmed yet (run again: the same transaction is sent).
WITH_TXID = ("signed", "sent", "seen", "mined")
NETWORKS = {"main": Network.MAINNET, "test": Network.TESTNET}
_NETWORK_NAMES = {network: name for name, network in NETWORKS.items()}

_DIGITS = re.compile(r"[0-9]+")
_HEX = re.compile(r"[0-9a-fA-F]+")
_ADDRESS = re.compile(r"[1mn][1-9A-HJ-NP-Za-km-z]{25,34}")
_TXID = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True)
class Problem:
    """One thing wrong: `line` as an editor numbers it (None: the whole file),
    `column` by name (None: the whole row), a machine-readable `reason`."""

    line: int | None
    column: str | None
    reason: str
    message: str

    def where(self, source: str) -> str:
        """`source:line: column: message`, as compilers print it."""
        at = source if self.line is None else f"{source}:{self.line}"
        return f"{at}: {self.column}: {self.message}" if self.column else f"{at}: {self.message}"


class ListError(Exception):
    """A list (or result file) that cannot be used: the first `KEPT` problems
    and `count` of them all; its message lists the first `SHOWN`."""

    def __init__(self, source: str, problems: Iterable[Problem], count: int) -> None:
        self.source = source
        self.problems = tuple(problems)
        self.count = count
        lines = [p.where(source) for p in self.problems[:SHOWN]]
        if count > len(lines):
            lines.append(f"... and {count - len(lines)} more")
        noun = "problem" if count == 1 else "problems"
        super().__init__(f"{source}: {count} {noun}\n" + "\n".join(lines))


@dataclass(frozen=True)
class Recipient:
    """Who a row pays. `kind` "address" (Base58Check P2PKH, `network` "main" or
    "test") or "key" (compressed public key, `value` in lower-case hex,
    `network` None); `script` is the P2PKH locking script paying it directly."""

    kind: str
    value: str
    script: bytes
    network: str | None


@dataclass(frozen=True)
class Row:
    """One payout of a list: `line` where it starts, its `id`, whom, how many
    satoshis, and its memo ("" when none)."""

    line: int
    id: str
    recipient: Recipient
    satoshis: int
    memo: str


@dataclass(frozen=True)
class PayoutList:
    """A list that is good throughout: its rows in file order, `count` of them
    and their `total` in satoshis."""

    rows: tuple[Row, ...]
    count: int
    total: int


@dataclass(frozen=True)
class Outcome:
    """Where one payout stands: a status of STATUSES; a txid (64 lower-case hex)
    for sent/seen/mined, optional for failed/skipped, none while owed.
    ValueError otherwise."""

    status: str
    txid: str | None = None

    def __post_init__(self) -> None:
        if self.status not in STATUSES:
            raise ValueError(f"status {self.status!r} is not one of {', '.join(STATUSES)}")
        if self.txid is not None and not _TXID.fullmatch(self.txid):
            raise ValueError(f"txid {self.txid!r} is not 64 lower-case hex digits")
        if self.status in WITH_TXID and self.txid is None:
            raise ValueError(f"a {self.status} payout needs its txid")
        if self.status == "owed" and self.txid is not None:
            raise ValueError("an owed payout has no txid yet")


@dataclass(frozen=True)
class ResultRow:
    """One line of `LIST.result.csv`: the row's id, recipient (as normalised),
    satoshis, and its Outcome."""

    id: str
    recipient: str
    satoshis: int
    outcome: Outcome


class _Bad(Exception):
    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


class _Problems:
    def __init__(self) -> None:
        self.kept: list[Problem] = []
        self.count = 0

    def add(self, line: int | None, column: str | None, reason: str, message: str) -> None:
        self.count += 1
        if len(self.kept) < KEPT:
            self.kept.append(Problem(line, column, reason, message))

    def error(self, source: str) -> ListError:
        return ListError(source, self.kept, self.count)


def read_list(path: str | os.PathLike[str], *, network: str | None = None) -> PayoutList:
    """The list in the file at `path` (see the module); ListError for anything
    wrong with it, unreadable or larger than MAX_BYTES included."""
    data = _read_capped(path)
    return parse_list(data, network=network, source=str(path))


def parse_list(
    data: bytes | str, *, network: str | None = None, source: str = "LIST.csv"
) -> PayoutList:
    """The list in `data` (UTF-8 bytes, or text); ListError naming every bad
    row by line and column; ValueError for a `network` other than None,
    "main" or "test"."""
    if network is not None and network not in NETWORKS:
        raise ValueError(f"network {network!r} is not 'main' or 'test'")
    problems = _Problems()
    text = _decode(data, problems)
    rows = [] if text is None else _rows(text, network, problems)
    total = sum(row.satoshis for row in rows)
    if total > MAX_SATOSHIS:
        problems.add(None, None, "list-total", f"the rows total {total} satoshis, more than exist")
    if problems.count:
        raise problems.error(source)
    return PayoutList(tuple(rows), len(rows), total)


def _read_capped(path: str | os.PathLike[str]) -> bytes:
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_BYTES + 1)
    except OSError as exc:
        problem = Problem(None, None, "unreadable", f"cannot read it: {exc.strerror or exc}")
        raise ListError(str(path), [problem], 1) from None
    return data


def _decode(data: bytes | str, problems: _Problems) -> str | None:
    if len(data) > MAX_BYTES:
        problems.add(None, None, "too-large", f"larger than {MAX_BYTES} bytes: split the list")
        return None
    if isinstance(data, str):
        return data.removeprefix("\ufeff")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = len(re.findall(rb"\r\n|\r|\n", data[: exc.start])) + 1
        problems.add(line, None, "not-utf8", "not UTF-8 text (save the file as CSV UTF-8)")
        return None


def _records(text: str, problems: _Problems) -> Iterator[tuple[int, list[str]]]:
    """(first line, fields) of each CSV record; a syntax error is a problem, and
    the reader goes on at the next line."""
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    last = 0
    while True:
        try:
            fields = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            # An unclosed quote is found at the end: say where it opened.
            unclosed = "unexpected end of data" in str(exc)
            at = last + 1 if unclosed else reader.line_num
            problems.add(at, None, "csv-syntax", _csv_message(str(exc)))
            if reader.line_num == last:  # no progress: nothing more to read
                return
            last = reader.line_num
            continue
        start, last = last + 1, reader.line_num
        yield start, fields


def _csv_message(raw: str) -> str:
    if "unexpected end of data" in raw:
        return "a quoted field opened on this line is never closed"
    if "expected after" in raw:
        return 'text after a closing quote (double a quote inside a quoted field: "")'
    if "field limit" in raw:
        return "a field too long to be an id, a recipient, an amount or a memo"
    return f"not CSV: {raw}"


def _header(line: int, fields: list[str], problems: _Problems) -> dict[str, int] | None:
    """Column name -> index, for the names that appear once; None if the line
    has no known column name at all (it is not a header)."""
    names = [field.strip().lower() for field in fields]
    if not set(names) & set(COLUMNS):
        problems.add(
            line,
            None,
            "no-header",
            "the first line must be the header id,recipient,satoshis[,memo]",
        )
        return None
    where: dict[str, list[int]] = {}
    for index, name in enumerate(names):
        where.setdefault(name, []).append(index)
    for name, indexes in where.items():
        if name not in COLUMNS:
            label = name or f"column {indexes[0] + 1}"
            problems.add(
                line,
                label,
                "unknown-column",
                "unknown column (the columns are id, recipient, satoshis and optionally memo)",
            )
        elif len(indexes) > 1:
            at = ", ".join(str(i + 1) for i in indexes)
            problems.add(line, name, "duplicate-column", f"column appears more than once ({at})")
    for name in REQUIRED:
        if name not in where:
            problems.add(line, name, "missing-column", "missing column")
    return {name: at[0] for name, at in where.items() if name in COLUMNS and len(at) == 1}


def _rows(text: str, network: str | None, problems: _Problems) -> list[Row]:
    rows: list[Row] = []
    columns: dict[str, int] = {}
    header_line = width = seen = 0
    first: dict[str, int] = {}  # id -> the line it is first on
    for line, fields in _records(text, problems):
        if not any(field.strip() for field in fields):
            continue  # a blank line, or a spreadsheet's empty row
        if not header_line:
            header_line, width = line, len(fields)
            found = _header(line, fields, problems)
            if found is None:
                return rows
            columns = found
            continue
        seen += 1
        if seen > MAX_ROWS:
            problems.add(line, None, "too-many-rows", f"more than {MAX_ROWS} rows: split the list")
            return rows
        if len(fields) != width:
            problems.add(
                line, None, "field-count", f"{len(fields)} fields where the header has {width}"
            )
            continue
        row_id, row = _row(line, [(n, fields[at]) for n, at in columns.items()], network, problems)
        if row_id is not None and row_id in first:
            message = f"{row_id!r} is also the id on line {first[row_id]}"
            problems.add(line, "id", "duplicate-id", message)
        elif row_id is not None:
            first[row_id] = line
            if row is not None:
                rows.append(row)
    if not header_line:
        message = "empty: the first line must be the header id,recipient,satoshis[,memo]"
        problems.add(1, None, "empty", message)
    elif not seen:
        problems.add(header_line, None, "no-rows", "no rows after the header: the list pays no one")
    return rows


def _row(
    line: int, cells: list[tuple[str, str]], network: str | None, problems: _Problems
) -> tuple[str | None, Row | None]:
    """The row's id (None if it has no good one) and the row (None if anything
    in it is bad, or a required column is missing: the header's problem, said
    once), its problems added."""
    row_id, recipient, satoshis, memo, bad = None, None, None, "", False
    for name, text in cells:
        try:
            if name == "id":
                row_id = _id(text)
            elif name == "recipient":
                recipient = _recipient(text, network)
            elif name == "satoshis":
                satoshis = _satoshis(text)
            else:
                memo = _memo(text)
        except _Bad as exc:
            problems.add(line, name, exc.reason, exc.message)
            bad = True
    if bad or row_id is None or recipient is None or satoshis is None:
        return row_id, None
    return row_id, Row(line, row_id, recipient, satoshis, memo)


def _id(text: str) -> str:
    if not text:
        raise _Bad("bad-id", "empty: every row needs its own id")
    if len(text) > MAX_ID_LENGTH:
        raise _Bad("bad-id", f"{len(text)} characters, more than {MAX_ID_LENGTH}")
    if text != text.strip():
        raise _Bad("bad-id", f"{text!r} has spaces at its ends")
    if any(unicodedata.category(c) == "Cc" for c in text):
        raise _Bad("bad-id", f"{text!r} has a control character (a line break?)")
    if any(unicodedata.category(c) == "Cf" for c in text):
        raise _Bad("bad-id", f"{text!r} has an invisible character (a zero-width space, a BOM?)")
    # One id, however an editor stored its accents: 'café' composed or not.
    return unicodedata.normalize("NFC", text)


def _memo(text: str) -> str:
    if len(text) > MAX_MEMO_LENGTH:
        raise _Bad("bad-memo", f"{len(text)} characters, more than {MAX_MEMO_LENGTH}")
    return text


def _satoshis(text: str) -> int:
    """A positive whole number of satoshis in the digits 0-9, at most MAX_SATOSHIS."""
    shown = text if len(text) <= 40 else text[:40] + "..."
    if _DIGITS.fullmatch(text):
        digits = text.lstrip("0")
        if not digits:
            raise _Bad("bad-amount", f"{text!r}: a payout is at least 1 satoshi")
        if len(digits) > len(str(MAX_SATOSHIS)) or int(digits) > MAX_SATOSHIS:
            message = f"{shown!r}: more than {MAX_SATOSHIS} satoshis (21 million BSV)"
            raise _Bad("bad-amount", message)
        return int(digits)
    if not text:
        hint = "empty"
    elif text != text.strip():
        hint = "has spaces around it"
    elif text[0] in "+-":
        hint = "no sign: a payout is a positive number"
    elif "." in text:
        hint = "not a whole number: amounts are in satoshis (1 BSV = 100000000)"
    elif re.fullmatch(r"[0-9]+[eE][+-]?[0-9]+", text):
        hint = "no exponent: write every digit"
    elif re.fullmatch(r"[0-9]+([ ,_'\u00a0\u202f][0-9]+)+", text):
        hint = "no thousands separators: digits only"
    else:
        hint = "not a whole number of satoshis in the digits 0-9"
    raise _Bad("bad-amount", hint if not text else f"{shown!r}: {hint}")


class BadRecipient(ValueError):
    """Not an address or key a payout can go to: a machine-readable `reason`
    ("bad-recipient", "wrong-network") and a message for people."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


def parse_recipient(text: str, network: str | None = None) -> Recipient:
    """A recipient as a list row gives it (see the module): a P2PKH address of
    `network` (None: either) or a compressed public key in hex; BadRecipient."""
    try:
        return _recipient(text, network)
    except _Bad as bad:
        raise BadRecipient(bad.reason, bad.message) from None


def _recipient(text: str, network: str | None) -> Recipient:
    """An address (checksum, P2PKH, `network` when given) or a compressed key on the curve."""
    shown = text if len(text) <= 80 else text[:80] + "..."
    if not text:
        raise _Bad("bad-recipient", "empty: an address or a public key is needed")
    if text != text.strip():
        raise _Bad("bad-recipient", f"{shown!r} has spaces around it")
    if text[:2] in ("02", "03", "04") and _HEX.fullmatch(text):
        return _key(text, shown)
    if not _ADDRESS.fullmatch(text):
        raise _Bad(
            "bad-recipient",
            f"{shown!r} is not a BSV address (1..., or m.../n... on testnet) "
            "nor a compressed public key in hex (02 or 03 and 64 hex digits)",
        )
    try:
        pkh, found = decode_address(text)
    except Exception:  # bsv-sdk raises ValueError for a bad checksum, others for worse
        raise _Bad("bad-recipient", f"{shown!r}: bad checksum, the address is mistyped") from None
    name = _NETWORK_NAMES.get(found)
    if name is None or len(pkh) != 20:
        raise _Bad("bad-recipient", f"{shown!r} is not a P2PKH address")
    if network is not None and name != network:
        raise _Bad(
            "wrong-network", f"{shown!r} is a {name}net address; this list pays on {network}net"
        )
    return Recipient("address", text, b"\x76\xa9\x14" + pkh + b"\x88\xac", name)


def _key(text: str, shown: str) -> Recipient:
    if text.startswith("04"):
        raise _Bad(
            "bad-recipient",
            "an uncompressed public key (04...): give its compressed form "
            "(02 or 03 and 64 hex digits)",
        )
    if len(text) != 66:
        raise _Bad(
            "bad-recipient",
            f"{shown!r}: a compressed public key is 66 hex digits (02 or 03, then 64), "
            f"not {len(text)}",
        )
    try:
        key = PublicKey(text.lower())
    except Exception:  # bsv-sdk: ValueError for a point off the curve
        raise _Bad("bad-recipient", f"{shown!r} is not a point on the curve (secp256k1)") from None
    return Recipient("key", text.lower(), p2pkh_script(key), None)


# --- LIST.result.csv -------------------------------------------------------


def result_path(list_path: str | os.PathLike[str]) -> Path:
    """Where the result of `LIST.csv` goes: `LIST.result.csv` beside it."""
    path = Path(list_path)
    stem = path.stem if path.suffix.lower() == ".csv" else path.name
    return path.with_name(stem + ".result.csv")


def result_rows(rows: Iterable[Row], outcomes: Mapping[str, Outcome]) -> tuple[ResultRow, ...]:
    """One ResultRow per list row, in the list's order, with its outcome by id
    (a row with none is "owed"); outcomes of ids not in the list are not
    written — the caller says so."""
    owed = Outcome("owed")
    return tuple(
        ResultRow(row.id, row.recipient.value, row.satoshis, outcomes.get(row.id, owed))
        for row in rows
    )


def render_result(rows: Iterable[ResultRow]) -> str:
    """`LIST.result.csv` as text: the header RESULT_COLUMNS then a line per row
    (CRLF, RFC 4180); the txid empty when there is none."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(RESULT_COLUMNS)
    for row in rows:
        outcome = row.outcome
        writer.writerow([row.id, row.recipient, row.satoshis, outcome.status, outcome.txid or ""])
    return out.getvalue()


def write_result(path: str | os.PathLike[str], rows: Iterable[ResultRow]) -> None:
    """Replace the file at `path` with these rows atomically: a reader sees the
    old file or the new one, never part of either (temporary file in the same
    folder, fsync, rename, fsync of the folder). The mode of a file replaced is
    kept; a new one is 0600 (it says who was paid). OSError as it comes."""
    data = render_result(rows).encode()
    target = Path(path)
    try:
        mode = target.stat().st_mode & 0o7777
    except FileNotFoundError:
        mode = 0o600
    fd, temporary = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fchmod(f.fileno(), mode)
            os.fsync(f.fileno())
        os.replace(temporary, target)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    folder = os.open(target.parent, os.O_RDONLY)
    try:
        os.fsync(folder)
    finally:
        os.close(folder)


def read_result(path: str | os.PathLike[str]) -> tuple[ResultRow, ...]:
    """The rows of a result file as write_result writes it; ListError otherwise."""
    return parse_result(_read_capped(path), source=str(path))


def parse_result(data: bytes | str, *, source: str = "LIST.result.csv") -> tuple[ResultRow, ...]:
    """The rows of result-file text, in order; ListError for a different header,
    a bad amount, status or txid."""
    problems = _Problems()
    text = _decode(data, problems)
    rows: list[ResultRow] = []
    header = False
    for line, fields in _records(text or "", problems):
        if not any(field.strip() for field in fields):
            continue
        if not header:
            header = True
            if [field.strip().lower() for field in fields] != list(RESULT_COLUMNS):
                problems.add(
                    line, None, "bad-header", "the header must be " + ",".join(RESULT_COLUMNS)
                )
                break
            continue
        if len(fields) != len(RESULT_COLUMNS):
            problems.add(
                line, None, "field-count", f"{len(fields)} fields, not {len(RESULT_COLUMNS)}"
            )
            continue
        row_id, recipient, amount, status, txid = fields
        try:
            satoshis = _satoshis(amount)
        except _Bad as bad:
            problems.add(line, "satoshis", bad.reason, bad.message)
            continue
        try:
            outcome = Outcome(status, txid or None)
        except ValueError as exc:
            problems.add(line, "status", "bad-outcome", str(exc))
            continue
        rows.append(ResultRow(row_id, recipient, satoshis, outcome))
    if text is not None and not header:
        problems.add(1, None, "empty", "empty: the first line must be the header")
    if problems.count:
        raise problems.error(source)
    return tuple(rows)
