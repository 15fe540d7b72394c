"""Shared state: the contract every store implements.

`Store` is the union that memory and Redis implement; each consumer
declares the few methods it uses as its own protocol (the cashier's
`Ledger`, the tally's `Counters`, the revocation cache's `RevocationList`,
the transparency report's `Receipts`), so a part can be tested against a
stand-in of two or three methods and reads as what it really needs.

`memory` is the embedded default for one process; `redis` shares the same
contract between workers and machines (every operation atomic, every key of
one operation in one Redis Cluster slot). The contract tests in
tests/test_store_contract.py run against both (those of the checkout watch
list and the refund list are in tests/test_late_checkout.py).

Amounts are whole numbers in the tab's smallest unit (satoshis, or
millisatoshis for prices below a satoshi); durations are seconds; times are
unix seconds; days are UTC dates written "YYYY-MM-DD" (see `utc_day`).
"""

from __future__ import annotations

import datetime
import time
from dataclasses import dataclass, field
from enum import Enum
from typing import Protocol

from gateway.store.receipts import Receipt
from gateway.store.refunds import Refund

MAX_PAGE = 10_000  # receipts one `receipts` call returns at most
MAX_DAYS = 3_660  # days one `stats` call may span (ten years)
MAX_BOUND = 32  # tokens one `bind` holder keeps at most


class Outcome(Enum):
    NEW = "new"  # this caller owns the txid now and must complete or release it
    SAME = "same"  # already claimed for the same purchase (maybe still in progress)
    CONFLICT = "conflict"  # already claimed for something else


@dataclass(frozen=True, slots=True)
class Claim:
    outcome: Outcome
    receipt: Receipt | None = None  # for SAME, once the first claimant completed
    token: str | None = None


@dataclass(frozen=True, slots=True)
class Window:
    """One fixed-window counter after an increment."""

    count: int  # hits in this window, this one included
    resets_in: int  # seconds until the window starts again


@dataclass(frozen=True, slots=True)
class DayStats:
    """The counters of one route of one service on one UTC day."""

    day: str  # "YYYY-MM-DD"
    service: str
    route: str
    counters: dict[str, int] = field(default_factory=dict)  # counter -> total (> 0)


@dataclass(frozen=True, slots=True)
class LeaseSync:
    """One call on a worker's lease of a tab (store/leases.py); amounts in msat."""

    seq: int  # rising per worker: a resent call is answered, not applied twice
    charged: int = 0  # everything charged on this lease so far (a total: resent, it is taken once)
    inflight: int = 0  # held by requests not settled yet: never given back
    need: int = 0  # free msat wanted on the lease (0: just sync)
    expect: int = 0  # what the worker believes the lease holds
    release: bool = False  # give back everything not in flight
    ttl: int = 30  # seconds the lease outlives a worker that stops syncing
    recall: float = 2.0  # seconds a recall (another worker short) lasts
    # Kept back from a recall for holds taken while this call is out (a
    # periodic sync's budget); a lease keeping any has not answered the recall.
    kept: int = 0


@dataclass(frozen=True, slots=True)
class Leased:
    """The lease after one call."""

    balance: int  # msat spendable on the tab, outside every lease and hold
    held: int  # msat the lease holds now (in flight and charges not synced included)
    granted: int  # msat added to the lease by this call
    pending: bool  # short, and another worker has not answered the recall yet
    lost: bool  # the lease had expired: charges since its last sync were not taken
    charged: int = 0  # of the lease's charges, what the store has taken (its running total)
    recalling: bool = False  # another worker is short: give back what is free


class StoreUnavailable(Exception):
    """The store cannot be reached: priced routes must fail closed."""


class Store(Protocol):
    # --- payments: one txid buys one thing ------------------------------------------
    async def claim(self, txid: str, purchase: str) -> Claim:
        """Atomically claim a txid for one purchase (service + scope)."""
        ...

    async def complete(self, txid: str, receipt: Receipt, token: str) -> None:
        """Record the receipt and token of a claimed payment (kept for good).

        The receipt also enters the receipts index under `receipt.txid`, once
        however often and under however many claim keys it is completed (a
        checkout completes the same receipt under "checkout:<id>"), and its
        `grant_id` into the grants index (`sold`); the last
        receipt completed for a txid is the one listed. The index is written
        first: once `complete` returns, both are there; when it raises, the
        receipt may be listed but not yet recorded under `txid`, and the same
        call again finishes the job (both writes are idempotent).
        """
        ...

    async def release(self, txid: str, purchase: str) -> None:
        """Give up a claim whose payment failed before it was accepted."""
        ...

    async def accepted(self, txid: str, purchase: str) -> Claim | None:
        """The completed claim of `txid` for `purchase` (SAME, with its receipt and
        token), or None: only looks, never claims."""
        ...

    async def receipt(self, txid: str) -> Receipt | None:
        """The receipt completed under this claim key (a txid, or "checkout:<id>")."""
        ...

    async def sold(self, grant_id: str) -> bool:
        """Whether a completed receipt names `grant_id` (a grant this gateway sold)."""
        ...

    async def receipts(
        self,
        *,
        since: int | None = None,
        until: int | None = None,
        service: str | None = None,
        txid: str | None = None,
        limit: int = 1000,
        after: str | None = None,
    ) -> list[Receipt]:
        """Indexed receipts, ordered by (time, txid), oldest first.

        Filters combine: `since` <= time < `until`, of one `service`, or the
        one receipt of `txid`. At most `limit` come back (capped at MAX_PAGE).
        To page, pass the txid of the last receipt of one page as `after` of
        the next, with the same filters: every receipt then comes exactly once
        (the position is (time, txid), so ties in time are fine and receipts
        added meanwhile are found if they sort later). A page shorter than
        `limit` is the last. An `after` that names no indexed receipt raises
        ValueError.
        """
        ...

    # --- tabs: prepaid balances -----------------------------------------------------
    async def credit(self, tab: str, amount: int, once: str) -> tuple[int, bool]:
        """Add `amount` unless `once` (e.g. a txid) was credited already.

        Returns (balance, credited now).
        """
        ...

    async def reserve(self, tab: str, amount: int, reservation: str, ttl: int) -> int | None:
        """Hold `amount` for one request if the balance covers it.

        Returns the balance left after holding, or None (nothing held) when it
        does not cover it. A reservation not settled or refunded within `ttl`
        returns to the balance by itself (a worker died mid-request).
        """
        ...

    async def settle(self, tab: str, reservation: str, charge: int) -> int:
        """Charge `charge` (at most what was held), return the rest; the balance.

        Settling or refunding a reservation twice, or one that expired, changes
        nothing.
        """
        ...

    async def refund(self, tab: str, reservation: str) -> int:
        """Return everything a reservation held; the balance."""
        ...

    async def balance(self, tab: str) -> int | None:
        """The spendable balance (held amounts excluded); None for no such tab."""
        ...

    # --- free quotas ----------------------------------------------------------------
    async def hit(self, key: str, window: int) -> Window:
        """Count one request against `key` in the current fixed window."""
        ...

    # --- revocations ----------------------------------------------------------------
    async def revoke(self, grant_id: str, until: int) -> None:
        """Refuse this grant (or tab) until the unix time `until`."""
        ...

    async def revoked(self, grant_id: str) -> bool: ...

    # --- statistics -----------------------------------------------------------------
    async def count(self, day: str, service: str, route: str, **fields: int) -> None:
        """Add to the counters of (`day`, `service`, `route`), e.g. requests=1.

        Counter names are free (requests, challenges, payments, satoshis,
        refunds_msat, upstream_errors, metered_msat...); increments are whole
        numbers >= 0 (ValueError otherwise) and a zero adds nothing. All the
        fields of one call are added together, in one round trip: cheap enough
        for every request.
        """
        ...

    async def stats(
        self, *, since_day: str, until_day: str, service: str | None = None
    ) -> list[DayStats]:
        """Counters of every route counted from `since_day` to `until_day`, both included.

        Ordered by (day, service, route); only routes counted that day appear.
        A range of more than MAX_DAYS days raises ValueError.
        """
        ...

    # --- checkouts watched past their expiry -----------------------------------------
    async def watch_checkout(
        self, checkout: str, entry: str, due: int, until: int, most: int
    ) -> bool:
        """Keep `entry` (what to look for: opaque text) for checkout `checkout`.

        Its first look is due at unix time `due`; at `until` it is forgotten.
        False, changing nothing, when the checkout is watched already, `until`
        has passed, or `most` checkouts are watched already (the work stays
        bounded). Nothing outlives the latest `until`.
        """
        ...

    async def due_checkouts(self, limit: int, lease: int) -> list[tuple[str, str]]:
        """Up to `limit` (checkout, entry) whose look is due now, the latest due first.

        Latest first: when looks fall behind, one just due (most often a
        recently expired checkout's, whose gaps are short) is not queued
        behind a backlog of overdue ones (old checkouts', whose gaps are long
        and which can wait). Each comes leased for `lease` seconds: no other call returns it before
        then, so two workers (or instances) never look at one checkout at once,
        and one whose looker died is looked at again after the lease. Checkouts
        past their `until` are dropped, never returned. Now is the store's clock.
        """
        ...

    async def look_again(self, checkout: str, due: int) -> None:
        """Make the next look at `checkout` due at unix time `due` (ending its lease).

        Nothing for a checkout not watched (any more).
        """
        ...

    async def unwatch_checkout(self, checkout: str) -> None:
        """Stop watching `checkout` (paid and recorded, or nothing more to find)."""
        ...

    # --- the refund list ------------------------------------------------------------
    async def add_refund(self, refund: Refund) -> bool:
        """List `refund` once per output (`refund.outpoint`, "txid:vout"); False,
        changing nothing, when that output is listed already.

        One transaction may pay several checkouts: each output is an entry.
        Entries are kept for good, like receipts.
        """
        ...

    async def settle_refund(self, outpoint: str, how: str, at: int) -> bool:
        """Mark the entry of `outpoint` ("txid:vout") settled (`how`, at unix time `at`), once.

        False when it was settled already (the first settlement stands). It
        may come before the entry is listed, and applies once it is.
        """
        ...

    async def refunds(
        self,
        *,
        since: int | None = None,
        txid: str | None = None,
        limit: int = 1000,
        after: str | None = None,
    ) -> list[Refund]:
        """Listed entries, with their settlement, ordered by (time, outpoint).

        `since` <= time, or the entries of the transaction `txid` (one per
        output listed: a txid may name several); at most `limit` (capped at
        MAX_PAGE). To page, pass the outpoint of the last entry of one page as
        `after` of the next, as `receipts` pages by txid (ValueError for an
        `after` that names no entry).
        """
        ...

    # --- tokens kept for holders that cannot keep them --------------------------------
    async def bind(self, holder: str, token: str, expires: int) -> None:
        """Keep `token` for `holder` until unix time `expires` (e.g. holder
        "peer:<identity key hex>:<service>": the grants an authenticated client
        bought, for a client that cannot hold tokens itself, BRC-105).

        At most MAX_BOUND per holder: the ones expiring last are kept (ties in
        expiry: the greater token, by its bytes). The same token bound again
        is kept once, its expiry set to the new one. An `expires` already past
        keeps nothing (and so drops that token if it was kept). Nothing
        outlives the latest expiry of its holder. Now is the store's clock.
        """
        ...

    async def bound(self, holder: str) -> list[str]:
        """The tokens kept for `holder` that have not expired, the latest-expiring first.

        Ties in expiry: the greater token first, by its bytes.
        """
        ...

    # --- health ---------------------------------------------------------------------
    async def ping(self) -> None:
        """Raise StoreUnavailable when the store cannot be used."""
        ...

    async def close(self) -> None: ...


# --- helpers shared by the implementations ----------------------------------------------


def utc_day(t: float | None = None) -> str:
    """The UTC day "YYYY-MM-DD" of unix time `t` (now by default)."""
    return time.strftime("%Y-%m-%d", time.gmtime(time.time() if t is None else t))


def check_day(day: str) -> datetime.date:
    """The date of a "YYYY-MM-DD" day; ValueError for anything else."""
    try:
        date = datetime.date.fromisoformat(day)
    except (TypeError, ValueError):
        date = None
    if date is None or date.isoformat() != day:
        raise ValueError(f"a day is written YYYY-MM-DD, not {day!r}")
    return date


def days(since_day: str, until_day: str) -> list[str]:
    """Every day from `since_day` to `until_day`, both included (at most MAX_DAYS)."""
    first, last = check_day(since_day), check_day(until_day)
    span = (last - first).days + 1
    if span > MAX_DAYS:
        raise ValueError(f"stats span at most {MAX_DAYS} days, not {span}")
    return [(first + datetime.timedelta(days=i)).isoformat() for i in range(span)]


def check_counts(fields: dict[str, int]) -> dict[str, int]:
    """The non-zero increments of a `count` call; ValueError for negative ones."""
    for name, value in fields.items():
        if not isinstance(value, int) or value < 0:
            raise ValueError(f"counter {name} must grow by a whole number >= 0, not {value!r}")
    return {name: value for name, value in fields.items() if value}


def page_limit(limit: int) -> int:
    """`limit` capped at MAX_PAGE; ValueError below 1."""
    if limit < 1:
        raise ValueError(f"limit must be at least 1, not {limit}")
    return min(limit, MAX_PAGE)
