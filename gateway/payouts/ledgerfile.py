"""The payout ledger in a local file: SQLite, for `farebox payouts send`.

SQLite (the standard library's) rather than a file of our own: every step
of the engine is one transaction that either happened whole or not at all
after a crash (rollback journal, `synchronous=FULL`), and a list of
100,000 payouts is looked up by status and id without reading it all.

One process pays from a ledger at a time: `open_ledger` takes an exclusive
lock on a companion `.lock` file and says who holds it otherwise. Reading
(`farebox payouts status`) takes no lock.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import sqlite3
import time
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

from gateway.payouts.records import MAX_ATTEMPTS, STATUSES, Batch, Payout, Tally
from gateway.policy.schema import Budget
from gateway.store import StoreUnavailable

log = logging.getLogger("farebox.payouts")

FORMAT = "1"
_ORDER = {status: rank for rank, status in enumerate(STATUSES)}

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS payouts (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    campaign TEXT NOT NULL,
    recipient TEXT NOT NULL,
    script TEXT NOT NULL,
    satoshis INTEGER NOT NULL CHECK (satoshis > 0),
    memo TEXT NOT NULL DEFAULT '',
    sender TEXT, prefix TEXT, suffix TEXT,
    status TEXT NOT NULL,
    txid TEXT, vout INTEGER,
    reason TEXT NOT NULL DEFAULT '',
    attempts INTEGER NOT NULL DEFAULT 0,
    retry_of TEXT,
    created REAL NOT NULL, updated REAL NOT NULL,
    ticket TEXT,
    day TEXT NOT NULL DEFAULT ''
);
CREATE TABLE IF NOT EXISTS budgets (
    campaign TEXT NOT NULL, day TEXT NOT NULL, spent INTEGER NOT NULL,
    PRIMARY KEY (campaign, day)
);
CREATE TABLE IF NOT EXISTS leases (name TEXT PRIMARY KEY, holder TEXT NOT NULL, until REAL NOT NULL);
CREATE INDEX IF NOT EXISTS payouts_by_status ON payouts (status, seq);
CREATE INDEX IF NOT EXISTS payouts_by_txid ON payouts (txid);
CREATE TABLE IF NOT EXISTS batches (
    txid TEXT PRIMARY KEY,
    beef BLOB NOT NULL,
    inputs TEXT NOT NULL,
    fee INTEGER NOT NULL,
    satoshis INTEGER NOT NULL,
    outputs INTEGER NOT NULL,
    status TEXT NOT NULL,
    reason TEXT NOT NULL DEFAULT '',
    block_height INTEGER,
    created REAL NOT NULL, updated REAL NOT NULL,
    payouts TEXT
);
CREATE INDEX IF NOT EXISTS batches_by_status ON batches (status);
"""

_PAYOUT_COLUMNS = (
    "id, campaign, recipient, script, satoshis, memo, sender, prefix, suffix, status, "
    "txid, vout, reason, attempts, retry_of, created, updated, ticket, day"
)


class LedgerError(Exception):
    """The ledger file cannot be used (locked by another run, not a ledger, unreadable)."""


class LedgerConflict(LedgerError):
    """A step that no longer fits the ledger (a payout not owed any more); nothing changed."""


class FileLedger:
    """The Ledger (gateway.payouts.engine) in one SQLite file; see the module."""

    def __init__(
        self,
        path: Path,
        db: sqlite3.Connection,
        lock_fd: int | None,
        ledger_id: str,
        id_key: bytes = b"",
    ) -> None:
        self.path = path
        self.ledger_id = ledger_id  # "ledger:" + 32 hex digits, made with the file
        self.id_key = id_key  # secret: keys rewards' payout ids (never the subject itself)
        self._db = db
        self._lock_fd = lock_fd

    # ----- writing ----------------------------------------------------------------

    async def add(self, payouts: Sequence[Payout]) -> list[Payout]:
        """Record `payouts` as owed, those whose id is new; returns the stored
        record for every one of them, in order (an old one as it stands)."""
        now = time.time()
        with self._write() as db:
            for p in payouts:
                db.execute(
                    f"INSERT OR IGNORE INTO payouts ({_PAYOUT_COLUMNS}) "
                    "VALUES (?,?,?,?,?,?,?,?,?,'owed',NULL,NULL,'',0,NULL,?,?,?,?)",
                    (
                        p.id, p.campaign, p.recipient, p.script, p.satoshis, p.memo,
                        p.sender, p.prefix, p.suffix, p.created or now, now, p.ticket, p.day,
                    ),
                )  # fmt: skip
        found = self._by_ids([p.id for p in payouts])
        return [found[p.id] for p in payouts]

    async def reserve(self, payout: Payout, budget: Budget, day: str) -> tuple[str, Payout | None]:
        """Hold `payout` (a reward) against its campaign's `budget` for UTC `day`
        (YYYY-MM-DD), once per id, in one transaction: ("new", the record),
        ("again", the record kept for this id), or ("exhausted", None) when the
        total or the day's budget cannot take it."""
        now = time.time()
        with self._write() as db:
            found = db.execute(
                f"SELECT {_PAYOUT_COLUMNS} FROM payouts WHERE id=?", (payout.id,)
            ).fetchone()
            if found is not None:
                return "again", _payout(found)
            total = self._spent(db, payout.campaign, "")
            today = self._spent(db, payout.campaign, day)
            if total + payout.satoshis > budget.total or (
                budget.per_day is not None and today + payout.satoshis > budget.per_day
            ):
                return "exhausted", None
            for when in ("", day):
                db.execute(
                    "INSERT INTO budgets VALUES (?,?,?) ON CONFLICT (campaign, day) "
                    "DO UPDATE SET spent=spent+excluded.spent",
                    (payout.campaign, when, payout.satoshis),
                )
            db.execute(
                f"INSERT INTO payouts ({_PAYOUT_COLUMNS}) "
                "VALUES (?,?,?,?,?,?,?,?,?,'reserved',NULL,NULL,'',0,NULL,?,?,?,?)",
                (
                    payout.id, payout.campaign, payout.recipient, payout.script,
                    payout.satoshis, payout.memo, payout.sender, payout.prefix, payout.suffix,
                    now, now, payout.ticket, day,
                ),
            )  # fmt: skip
        stored = await self.get(payout.id)
        assert stored is not None
        return "new", stored

    async def owe(self, payout_id: str) -> Payout | None:
        """The upstream recorded the participation: reserved -> owed. The record
        (None if there is none)."""
        with self._write() as db:
            db.execute(
                "UPDATE payouts SET status='owed', updated=? WHERE id=? AND status='reserved'",
                (time.time(), payout_id),
            )
        return await self.get(payout_id)

    async def unreserve(self, payout_id: str) -> bool:
        """The upstream refused the participation: drop the reservation and give
        its satoshis back to the budget (of the day it was charged to). True
        if there was one."""
        with self._write() as db:
            found = db.execute(
                "SELECT campaign, satoshis, day FROM payouts WHERE id=? AND status='reserved'",
                (payout_id,),
            ).fetchone()
            if found is None:
                return False
            campaign, satoshis, day = found
            db.execute("DELETE FROM payouts WHERE id=?", (payout_id,))
            db.execute(
                "UPDATE budgets SET spent=MAX(0, spent-?) WHERE campaign=? AND day IN ('', ?)",
                (satoshis, campaign, day),
            )
            return True

    async def spent(self, campaign: str, day: str) -> tuple[int, int]:
        """Satoshis of `campaign`'s budget held or paid: in all, and on `day`."""
        return self._spent(self._db, campaign, ""), self._spent(self._db, campaign, day)

    async def lease(self, name: str, holder: str, seconds: float) -> bool:
        """Hold the lease `name` for `seconds` (taken, or renewed by its holder);
        False if another holder has it."""
        now = time.time()
        with self._write() as db:
            found = db.execute("SELECT holder, until FROM leases WHERE name=?", (name,)).fetchone()
            if found is not None and found[0] != holder and found[1] > now:
                return False
            db.execute(
                "INSERT OR REPLACE INTO leases VALUES (?,?,?)", (name, holder, now + seconds)
            )
            return True

    @staticmethod
    def _spent(db: sqlite3.Connection, campaign: str, day: str) -> int:
        row = db.execute(
            "SELECT spent FROM budgets WHERE campaign=? AND day=?", (campaign, day)
        ).fetchone()
        return int(row[0]) if row else 0

    async def open_batch(self, batch: Batch) -> None:
        """Record the signed `batch` and move its payouts from owed to signed
        (txid, vout = position) in one transaction. LedgerConflict, with
        nothing changed, if any of them is not owed."""
        now = time.time()
        with self._write() as db:
            for vout, payout_id in enumerate(batch.payouts):
                moved = db.execute(
                    "UPDATE payouts SET status='signed', txid=?, vout=?, updated=? "
                    "WHERE id=? AND status='owed'",
                    (batch.txid, vout, now, payout_id),
                ).rowcount
                if moved != 1:
                    raise LedgerConflict(f"payout {payout_id!r} is not owed")
            db.execute(
                "INSERT INTO batches (txid, beef, inputs, fee, satoshis, outputs, status, "
                "reason, block_height, created, updated, payouts) "
                "VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
                (
                    batch.txid, batch.beef, _outpoints(batch.inputs), batch.fee,
                    batch.satoshis, len(batch.payouts), "signed", "", None, now, now,
                    json.dumps(list(batch.payouts)),
                ),
            )  # fmt: skip

    async def advance(self, txid: str, status: str, *, block_height: int | None = None) -> None:
        """Move batch `txid` and its payouts forward to `status` (sent, seen,
        mined); never backwards, never out of failed."""
        rank = _ORDER[status]
        now = time.time()
        with self._write() as db:
            row = db.execute("SELECT status FROM batches WHERE txid=?", (txid,)).fetchone()
            if row is None or row[0] == "failed" or _ORDER[row[0]] >= rank:
                return
            db.execute(
                "UPDATE batches SET status=?, block_height=COALESCE(?, block_height), updated=? "
                "WHERE txid=?",
                (status, block_height, now, txid),
            )
            db.execute(
                "UPDATE payouts SET status=?, reason='', updated=? WHERE txid=? AND status IN "
                "('signed','sent','seen')",
                (status, now, txid),
            )

    async def refuse(self, txid: str, reason: str, *, retry: bool = True) -> int:
        """The network refused batch `txid` for sure: it is failed. With `retry`
        its payouts are owed again (to be paid by a batch spending its coins,
        so that at most one of the two can ever be mined), or failed after
        MAX_ATTEMPTS refusals; without, they fail with `reason`. Returns how
        many are owed again."""
        now = time.time()
        with self._write() as db:
            row = db.execute("SELECT status FROM batches WHERE txid=?", (txid,)).fetchone()
            if row is None or row[0] in ("failed", "mined"):
                return 0
            db.execute(
                "UPDATE batches SET status='failed', reason=?, updated=? WHERE txid=?",
                (reason, now, txid),
            )
            most = MAX_ATTEMPTS if retry else 0
            db.execute(
                "UPDATE payouts SET attempts=attempts+1, reason=?, retry_of=?, txid=NULL, "
                "vout=NULL, updated=?, status=CASE WHEN attempts+1 >= ? THEN 'failed' "
                "ELSE 'owed' END WHERE txid=? AND status IN ('signed','sent','seen')",
                (reason, txid, now, most, txid),
            )
            return db.execute(
                "SELECT COUNT(*) FROM payouts WHERE retry_of=? AND status='owed'", (txid,)
            ).fetchone()[0]

    async def fail(self, payout_ids: Sequence[str], reason: str) -> None:
        """Owed payouts that must not be paid now: failed, with `reason`."""
        now = time.time()
        with self._write() as db:
            for payout_id in payout_ids:
                db.execute(
                    "UPDATE payouts SET status='failed', reason=?, updated=? "
                    "WHERE id=? AND status='owed'",
                    (reason, now, payout_id),
                )

    async def revive(self, txid: str, status: str) -> int:
        """A batch recorded refused that the chain has after all (seen or mined):
        it takes `status` again, and so do its payouts not paid since (failed
        or owed), at their outputs. Returns how many."""
        now = time.time()
        with self._write() as db:
            row = db.execute("SELECT status FROM batches WHERE txid=?", (txid,)).fetchone()
            if row is None or row[0] != "failed":
                return 0
            db.execute(
                "UPDATE batches SET status=?, reason='', updated=? WHERE txid=?",
                (status, now, txid),
            )
            changed = 0
            for vout, payout_id in enumerate(self._batch_order(db, txid)):
                changed += db.execute(
                    "UPDATE payouts SET status=?, txid=?, vout=?, reason='', updated=? "
                    "WHERE id=? AND status IN ('failed','owed')",
                    (status, txid, vout, now, payout_id),
                ).rowcount
            return changed

    async def cancel(self, payout_ids: Sequence[str], reason: str) -> int:
        """Failed payouts an admin will not have paid (the refused batch is known
        never to be mined, or the row is paid some other way): cancelled, for
        good, with `reason`. Returns how many."""
        now = time.time()
        with self._write() as db:
            return sum(
                db.execute(
                    "UPDATE payouts SET status='cancelled', reason=?, updated=? "
                    "WHERE id=? AND status='failed'",
                    (reason, now, payout_id),
                ).rowcount
                for payout_id in payout_ids
            )

    @staticmethod
    def _batch_order(db: sqlite3.Connection, txid: str) -> list[str]:
        """The payout ids of batch `txid` in output order."""
        found = db.execute("SELECT payouts FROM batches WHERE txid=?", (txid,)).fetchone()
        return [] if found is None or found[0] is None else list(json.loads(found[0]))

    async def retry_failed(self) -> int:
        """Owe every failed payout again (an admin's decision, with fresh attempts);
        returns how many."""
        now = time.time()
        with self._write() as db:
            return db.execute(
                "UPDATE payouts SET status='owed', attempts=0, updated=? WHERE status='failed'",
                (now,),
            ).rowcount

    # ----- reading ----------------------------------------------------------------

    async def get(self, payout_id: str) -> Payout | None:
        return self._by_ids([payout_id]).get(payout_id)

    async def owed(self, limit: int) -> list[Payout]:
        """Up to `limit` owed payouts, oldest first."""
        rows = self._db.execute(
            f"SELECT {_PAYOUT_COLUMNS} FROM payouts WHERE status='owed' ORDER BY seq LIMIT ?",
            (limit,),
        ).fetchall()
        return [_payout(r) for r in rows]

    async def payouts(
        self, *, status: str | None = None, campaign: str | None = None
    ) -> list[Payout]:
        """Every payout (with `status`, in `campaign`), in the order recorded."""
        where, args = _filters(status=status, campaign=campaign)
        rows = self._db.execute(
            f"SELECT {_PAYOUT_COLUMNS} FROM payouts{where} ORDER BY seq", args
        ).fetchall()
        return [_payout(r) for r in rows]

    async def batch(self, txid: str) -> Batch | None:
        found = await self._batches("WHERE b.txid=?", (txid,))
        return found[0] if found else None

    async def batches(self, statuses: Iterable[str]) -> list[Batch]:
        """The batches in any of `statuses`, oldest first."""
        wanted = tuple(statuses)
        marks = ",".join("?" * len(wanted))
        return await self._batches(f"WHERE b.status IN ({marks})", wanted)

    async def tally(self) -> Tally:
        rows = self._db.execute(
            "SELECT status, COUNT(*), SUM(satoshis) FROM payouts GROUP BY status"
        ).fetchall()
        return Tally({s: n for s, n, _ in rows}, {s: int(t or 0) for s, _, t in rows})

    async def close(self) -> None:
        self._db.close()
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    # ----- inside -----------------------------------------------------------------

    @contextlib.contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One transaction: committed whole, or rolled back on any exception."""
        db = self._db
        try:
            db.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as exc:  # locked past the timeout: busy, try again
            raise StoreUnavailable(f"the payout ledger {self.path} is busy ({exc})") from None
        try:
            yield db
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")

    def _by_ids(self, ids: list[str]) -> dict[str, Payout]:
        found: dict[str, Payout] = {}
        for start in range(0, len(ids), 500):  # SQLite's bound parameters, a chunk at a time
            chunk = ids[start : start + 500]
            marks = ",".join("?" * len(chunk))
            for row in self._db.execute(
                f"SELECT {_PAYOUT_COLUMNS} FROM payouts WHERE id IN ({marks})", chunk
            ):
                payout = _payout(row)
                found[payout.id] = payout
        return found

    async def _batches(self, where: str, args: tuple[object, ...]) -> list[Batch]:
        rows = self._db.execute(
            "SELECT b.txid, b.beef, b.inputs, b.fee, b.satoshis, b.status, b.reason, "
            f"b.created, b.updated, b.block_height, b.payouts FROM batches b {where} "
            "ORDER BY b.created",
            args,
        ).fetchall()
        batches = []
        for (
            txid,
            beef,
            inputs,
            fee,
            satoshis,
            status,
            reason,
            created,
            updated,
            height,
            members,
        ) in rows:
            if members is not None:
                ids = json.loads(members)
            else:  # a batch recorded before its members were kept: from its payouts
                ids = [
                    r[0]
                    for r in self._db.execute(
                        "SELECT id FROM payouts WHERE txid=? ORDER BY vout", (txid,)
                    )
                ]
            batches.append(
                Batch(
                    txid, tuple(ids), bytes(beef), _parse_outpoints(inputs), fee, satoshis,
                    status, reason, created, updated, height,
                )
            )  # fmt: skip
        return batches


def open_ledger(
    path: str | os.PathLike[str], *, write: bool = True, exclusive: bool = True
) -> FileLedger:
    """The ledger at `path`, created (0600) if missing when `write`. With
    `write` and `exclusive`, the caller holds it alone until close (a list's
    run); a gateway's workers share theirs (`exclusive=False`: SQLite's own
    locking orders their writes). LedgerError if another process holds it,
    the file is not a ledger (another program's SQLite database included),
    is damaged, or cannot be made; a ledger readable by others is warned of."""
    target = Path(path)
    lock_fd = None
    try:
        if write and exclusive:
            lock_fd = _lock(target)
        if write and not target.exists():
            with contextlib.suppress(FileExistsError):
                os.close(os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        elif not target.exists():
            raise LedgerError(f"{target}: no such ledger (nothing was paid from this list yet)")
        if target.stat().st_mode & 0o077:
            log.warning("%s says who was paid and is readable by others: chmod 600 it", target)
        # A gateway's workers wait for each other's writes briefly (the event
        # loop waits too); a list's run holds the ledger alone.
        db, ledger_id, id_key = _connect(target, write, 30.0 if exclusive else 2.0)
    except OSError as exc:
        if lock_fd is not None:
            os.close(lock_fd)
        raise LedgerError(f"{target}: {exc.strerror or exc}") from None
    except LedgerError:
        if lock_fd is not None:
            os.close(lock_fd)
        raise
    return FileLedger(target, db, lock_fd, ledger_id, id_key)


def _lock(target: Path) -> int:
    fd = os.open(target.with_name(target.name + ".lock"), os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise LedgerError(
            f"{target} is in use: another `farebox payouts send` is paying from it"
        ) from None
    return fd


def _connect(target: Path, write: bool, timeout: float) -> tuple[sqlite3.Connection, str, bytes]:
    """A connection to a ledger (made, or brought up to date, when `write`) and its id."""
    try:
        db = sqlite3.connect(target, isolation_level=None, timeout=timeout)
    except sqlite3.Error as exc:
        raise LedgerError(f"{target} cannot be opened as a payout ledger ({exc})") from None
    try:
        db.execute("PRAGMA synchronous=FULL")
        tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        if tables and "meta" not in tables:
            raise LedgerError(f"{target} is another program's database, not a payout ledger")
        if write:
            db.executescript(_SCHEMA)
            _bring_up_to_date(db)
            db.execute("INSERT OR IGNORE INTO meta VALUES ('format', ?)", (FORMAT,))
            db.execute(
                "INSERT OR IGNORE INTO meta VALUES ('id', ?)", ("ledger:" + os.urandom(16).hex(),)
            )
            db.execute("INSERT OR IGNORE INTO meta VALUES ('id_key', ?)", (os.urandom(32).hex(),))
        elif "payouts" in tables:
            _bring_up_to_date(db)  # even to be read
        found = db.execute("SELECT value FROM meta WHERE key='format'").fetchone()
        ledger_id = db.execute("SELECT value FROM meta WHERE key='id'").fetchone()
        id_key = db.execute("SELECT value FROM meta WHERE key='id_key'").fetchone()
    except sqlite3.DatabaseError as exc:
        db.close()
        raise LedgerError(f"{target} is not a payout ledger ({exc})") from None
    if found is None or found[0] != FORMAT:
        db.close()
        raise LedgerError(f"{target} is a payout ledger of another format ({found})")
    return db, str(ledger_id[0]) if ledger_id else "", bytes.fromhex(id_key[0]) if id_key else b""


def _bring_up_to_date(db: sqlite3.Connection) -> None:
    """Columns added since the first release (rewards), added to older ledgers."""
    columns = {row[1] for row in db.execute("PRAGMA table_info(payouts)")}
    if "ticket" not in columns:
        db.execute("ALTER TABLE payouts ADD COLUMN ticket TEXT")
    if "day" not in columns:
        db.execute("ALTER TABLE payouts ADD COLUMN day TEXT NOT NULL DEFAULT ''")
    if "payouts" not in {row[1] for row in db.execute("PRAGMA table_info(batches)")}:
        db.execute("ALTER TABLE batches ADD COLUMN payouts TEXT")


def _payout(row: tuple[object, ...]) -> Payout:
    return Payout(*row)  # type: ignore[arg-type]  # columns in the dataclass's order


def _filters(**wanted: str | None) -> tuple[str, tuple[str, ...]]:
    given = {k: v for k, v in wanted.items() if v is not None}
    if not given:
        return "", ()
    return " WHERE " + " AND ".join(f"{k}=?" for k in given), tuple(given.values())


def _outpoints(outpoints: Iterable[tuple[str, int]]) -> str:
    return ",".join(f"{txid}:{vout}" for txid, vout in outpoints)


def _parse_outpoints(text: str) -> tuple[tuple[str, int], ...]:
    if not text:
        return ()
    pairs = (item.rsplit(":", 1) for item in text.split(","))
    return tuple((txid, int(vout)) for txid, vout in pairs)
