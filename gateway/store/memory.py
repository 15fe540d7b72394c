"""The embedded store: one process, state in dicts, lost on restart.

Every operation runs on one event loop with no await between reading and
writing, so each is atomic without locks. Anything that expires (held
amounts, quota windows, revocations, bound tokens) is checked lazily when
touched, against an injectable clock (unix seconds) so tests need not sleep.

The receipts index is a list of (time, txid) kept sorted (one overall, one per
service), so a page is one bisect and a slice; the refund list likewise (keyed
by outpoint, "txid:vout", with the outpoints of each txid beside it). The
checkouts watched past their expiry sit in heaps: by when each is due for a
look, the looks due now by latest due first, and by when each is forgotten
(entries superseded are skipped when they surface). The tokens bound to a
holder are a dict of at most MAX_BOUND, cut down on every `bind`; a holder
whose latest expiry has passed goes with the next sweep.
"""

from __future__ import annotations

import bisect
import heapq
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from gateway.store import (
    MAX_BOUND,
    Claim,
    DayStats,
    Outcome,
    Window,
    check_counts,
    check_day,
    days,
    page_limit,
)
from gateway.store.receipts import Receipt
from gateway.store.refunds import Refund

_PURGE_EVERY = 60.0  # seconds between sweeps of expired quotas, revocations, bound tokens


@dataclass
class _Entry:
    purchase: str
    receipt: Receipt | None = None
    token: str | None = None


@dataclass
class _Watched:
    entry: str
    due: float
    until: int


@dataclass
class _Tab:
    balance: int = 0
    held: dict[str, tuple[int, float]] = field(default_factory=dict)  # id -> (amount, deadline)
    due: list[tuple[float, str]] = field(default_factory=list)  # heap of (deadline, id)
    once: set[str] = field(default_factory=set)

    def sweep(self, now: float) -> None:
        """Return every hold whose deadline passed (its worker died mid-request)."""
        while self.due and self.due[0][0] <= now:
            deadline, reservation = heapq.heappop(self.due)
            hold = self.held.get(reservation)
            # The heap keeps entries of settled holds (and of earlier holds
            # reusing an id): only the live hold with this deadline counts.
            if hold is not None and hold[1] == deadline:
                del self.held[reservation]
                self.balance += hold[0]

    def finish(self, reservation: str, charge: int) -> None:
        """Charge at most what was held and return the rest; unknown ids do nothing."""
        hold = self.held.pop(reservation, None)
        if hold is not None:
            self.balance += hold[0] - min(charge, hold[0])


class MemoryStore:
    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._claims: dict[str, _Entry] = {}
        self._tabs: dict[str, _Tab] = {}
        self._windows: dict[tuple[str, int], tuple[int, float]] = {}  # -> (count, ends)
        self._revoked: dict[str, int] = {}  # grant id -> until
        self._receipts: dict[str, Receipt] = {}  # txid -> the last receipt completed
        self._grants: set[str] = set()  # grant ids receipts name
        self._by_time: list[tuple[int, str]] = []  # sorted (time, txid)
        self._by_service: dict[str, list[tuple[int, str]]] = {}  # service -> sorted (time, txid)
        self._counters: dict[tuple[str, str, str], dict[str, int]] = {}  # (day, service, route)
        self._next_purge = clock() + _PURGE_EVERY
        self._watched: dict[str, _Watched] = {}  # checkout id -> what to look for, when
        self._due: list[tuple[float, str]] = []  # heap of (due, checkout id); stale ones skipped
        self._ready: list[tuple[float, str]] = []  # heap of (-due, checkout id): due now
        self._until: list[tuple[int, str]] = []  # heap of (until, checkout id)
        self._refunds: dict[str, Refund] = {}  # outpoint -> the entry as listed
        self._refund_order: list[tuple[int, str]] = []  # sorted (time, outpoint)
        self._refund_outputs: dict[str, list[str]] = {}  # txid -> its outpoints listed
        self._settled: dict[str, tuple[str, int]] = {}  # outpoint -> (how, when)
        self._bound: dict[str, dict[str, int]] = {}  # holder -> {token: expires}, never empty

    # --- payments ---------------------------------------------------------------------
    async def claim(self, txid: str, purchase: str) -> Claim:
        # No await between the check and the write: atomic on one event loop.
        entry = self._claims.get(txid)
        if entry is None:
            self._claims[txid] = _Entry(purchase)
            return Claim(Outcome.NEW)
        if entry.purchase != purchase:
            return Claim(Outcome.CONFLICT)
        return Claim(Outcome.SAME, entry.receipt, entry.token)

    async def accepted(self, txid: str, purchase: str) -> Claim | None:
        entry = self._claims.get(txid)
        if entry is None or entry.purchase != purchase or entry.receipt is None:
            return None
        if entry.token is None:
            return None
        return Claim(Outcome.SAME, entry.receipt, entry.token)

    async def complete(self, txid: str, receipt: Receipt, token: str) -> None:
        self._index(receipt)
        # setdefault: a claim taken over after its first owner released it.
        entry = self._claims.setdefault(txid, _Entry(f"{receipt.service}\n{receipt.resource}"))
        entry.receipt, entry.token = receipt, token

    def _index(self, receipt: Receipt) -> None:
        """List `receipt` under its txid, in place of any earlier one."""
        old = self._receipts.get(receipt.txid)
        if old is not None:
            for order in (self._by_time, self._by_service[old.service]):
                del order[bisect.bisect_left(order, (old.time, old.txid))]
        self._receipts[receipt.txid] = receipt
        self._grants.add(receipt.grant_id)
        position = (receipt.time, receipt.txid)
        bisect.insort(self._by_time, position)
        bisect.insort(self._by_service.setdefault(receipt.service, []), position)

    async def sold(self, grant_id: str) -> bool:
        return grant_id in self._grants

    async def release(self, txid: str, purchase: str) -> None:
        entry = self._claims.get(txid)
        if entry is not None and entry.purchase == purchase and entry.receipt is None:
            del self._claims[txid]

    async def receipt(self, txid: str) -> Receipt | None:
        entry = self._claims.get(txid)
        return entry.receipt if entry else None

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
        limit = page_limit(limit)
        order = self._by_time if service is None else self._by_service.get(service, [])
        start = 0 if since is None else bisect.bisect_left(order, (since, ""))
        if after is not None:
            cursor = self._receipts.get(after)
            if cursor is None:
                raise ValueError(f"no receipt {after!r} to page after")
            start = max(start, bisect.bisect_right(order, (cursor.time, cursor.txid)))
        end = len(order) if until is None else bisect.bisect_left(order, (until, ""))
        if txid is not None:
            found = self._receipts.get(txid)
            if found is None or service not in (None, found.service):
                return []
            rank = bisect.bisect_left(order, (found.time, found.txid))
            return [found] if start <= rank < end else []
        return [self._receipts[x] for _, x in order[start : min(end, start + limit)]]

    # --- tabs ---------------------------------------------------------------------------
    async def credit(self, tab: str, amount: int, once: str) -> tuple[int, bool]:
        _at_least("amount", amount, 0)
        account = self._tab(tab, create=True)
        assert account is not None
        if once in account.once:
            return account.balance, False
        account.once.add(once)
        account.balance += amount
        return account.balance, True

    async def reserve(self, tab: str, amount: int, reservation: str, ttl: int) -> int | None:
        _at_least("amount", amount, 0)
        _at_least("ttl", ttl, 1)
        account = self._tab(tab)
        if account is None:
            return None
        if reservation in account.held:
            # A retried reserve: the hold stands once, unchanged.
            return account.balance
        if account.balance < amount:
            return None
        deadline = self._clock() + ttl
        account.held[reservation] = (amount, deadline)
        heapq.heappush(account.due, (deadline, reservation))
        account.balance -= amount
        return account.balance

    async def settle(self, tab: str, reservation: str, charge: int) -> int:
        _at_least("charge", charge, 0)
        account = self._tab(tab)
        if account is None:
            return 0
        account.finish(reservation, charge)
        return account.balance

    async def refund(self, tab: str, reservation: str) -> int:
        return await self.settle(tab, reservation, 0)

    async def balance(self, tab: str) -> int | None:
        account = self._tab(tab)
        return None if account is None else account.balance

    def _tab(self, tab: str, *, create: bool = False) -> _Tab | None:
        """The tab with its expired holds already returned to its balance."""
        account = self._tabs.get(tab)
        if account is None and create:
            account = self._tabs[tab] = _Tab()
        if account is not None:
            account.sweep(self._clock())
        return account

    # --- quotas -------------------------------------------------------------------------
    async def hit(self, key: str, window: int) -> Window:
        _at_least("window", window, 1)
        now = self._clock()
        self._purge(now)
        count, ends = self._windows.get((key, window), (0, now))
        if ends <= now:
            # The window starts with its first hit, as in the Redis store.
            count, ends = 0, now + window
        self._windows[key, window] = (count + 1, ends)
        return Window(count + 1, max(1, math.ceil(ends - now)))

    # --- revocations --------------------------------------------------------------------
    async def revoke(self, grant_id: str, until: int) -> None:
        now = self._clock()
        self._purge(now)
        # The later deadline wins: a revocation is never shortened by another.
        if until > now and until > self._revoked.get(grant_id, 0):
            self._revoked[grant_id] = until

    async def revoked(self, grant_id: str) -> bool:
        return self._revoked.get(grant_id, 0) > self._clock()

    def _purge(self, now: float) -> None:
        """Drop ended windows, revocations and holders now and then, so memory stays bounded."""
        if now < self._next_purge:
            return
        self._next_purge = now + _PURGE_EVERY
        self._windows = {k: v for k, v in self._windows.items() if v[1] > now}
        self._revoked = {k: v for k, v in self._revoked.items() if v > now}
        # A holder goes once its latest token expired (as its Redis key does).
        self._bound = {k: v for k, v in self._bound.items() if max(v.values(), default=0) > now}

    # --- statistics ---------------------------------------------------------------------
    async def count(self, day: str, service: str, route: str, **fields: int) -> None:
        check_day(day)
        fields = check_counts(fields)
        if fields:
            counters = self._counters.setdefault((day, service, route), {})
            for name, value in fields.items():
                counters[name] = counters.get(name, 0) + value

    async def stats(
        self, *, since_day: str, until_day: str, service: str | None = None
    ) -> list[DayStats]:
        wanted = set(days(since_day, until_day))
        return [
            DayStats(day, name, route, dict(counters))
            for (day, name, route), counters in sorted(self._counters.items())
            if day in wanted and service in (None, name)
        ]

    # --- checkouts watched past their expiry -------------------------------------------
    async def watch_checkout(
        self, checkout: str, entry: str, due: int, until: int, most: int
    ) -> bool:
        now = self._clock()
        self._forget_past(now)
        if checkout in self._watched or until <= now or len(self._watched) >= most:
            return False
        self._watched[checkout] = _Watched(entry, due, until)
        heapq.heappush(self._due, (due, checkout))
        heapq.heappush(self._until, (until, checkout))
        return True

    async def due_checkouts(self, limit: int, lease: int) -> list[tuple[str, str]]:
        _at_least("limit", limit, 1)
        now = self._clock()
        self._forget_past(now)
        while self._due and self._due[0][0] <= now:
            due, checkout = heapq.heappop(self._due)
            heapq.heappush(self._ready, (-due, checkout))  # latest due first
        found: list[tuple[str, str]] = []
        while self._ready and len(found) < limit:
            due, checkout = heapq.heappop(self._ready)
            watched = self._watched.get(checkout)
            if watched is None or watched.due != -due:
                continue  # unwatched, or rescheduled since: a stale heap entry
            watched.due = now + lease
            heapq.heappush(self._due, (watched.due, checkout))
            found.append((checkout, watched.entry))
        return found

    async def look_again(self, checkout: str, due: int) -> None:
        watched = self._watched.get(checkout)
        if watched is not None:
            watched.due = due
            heapq.heappush(self._due, (due, checkout))

    async def unwatch_checkout(self, checkout: str) -> None:
        self._watched.pop(checkout, None)

    def _forget_past(self, now: float) -> None:
        """Drop the checkouts whose grace has passed (and heap entries of unwatched ones)."""
        while self._until and self._until[0][0] <= now:
            _, checkout = heapq.heappop(self._until)
            watched = self._watched.get(checkout)
            if watched is not None and watched.until <= now:
                del self._watched[checkout]
        if len(self._due) + len(self._ready) > 2 * len(self._watched) + 64:
            self._due = [(d, c) for d, c in self._due if c in self._watched]
            self._ready = [(d, c) for d, c in self._ready if c in self._watched]
            heapq.heapify(self._due)
            heapq.heapify(self._ready)

    # --- the refund list ----------------------------------------------------------------
    async def add_refund(self, refund: Refund) -> bool:
        key = refund.outpoint
        if key in self._refunds:
            return False
        self._refunds[key] = refund.settle("", 0)
        bisect.insort(self._refund_order, (refund.time, key))
        self._refund_outputs.setdefault(refund.txid, []).append(key)
        return True

    async def settle_refund(self, outpoint: str, how: str, at: int) -> bool:
        if outpoint in self._settled:
            return False
        self._settled[outpoint] = (how, at)
        return True

    async def refunds(
        self,
        *,
        since: int | None = None,
        txid: str | None = None,
        limit: int = 1000,
        after: str | None = None,
    ) -> list[Refund]:
        limit = page_limit(limit)
        order = self._refund_order
        start = 0 if since is None else bisect.bisect_left(order, (since, ""))
        if after is not None:
            cursor = self._refunds.get(after)
            if cursor is None:
                raise ValueError(f"no refund {after!r} to page after")
            start = max(start, bisect.bisect_right(order, (cursor.time, after)))
        if txid is not None:
            positions = sorted(
                (self._refunds[key].time, key) for key in self._refund_outputs.get(txid, [])
            )
            # Those at or past the page's start in (time, outpoint) order.
            first = order[start] if start < len(order) else None
            picked = [key for (t, key) in positions if first is not None and (t, key) >= first]
            picked = picked[:limit]
        else:
            picked = [key for _, key in order[start : start + limit]]
        return [self._with_settlement(key) for key in picked]

    def _with_settlement(self, key: str) -> Refund:
        refund = self._refunds[key]
        settled = self._settled.get(key)
        return refund if settled is None else refund.settle(*settled)

    # --- tokens kept for holders --------------------------------------------------------
    async def bind(self, holder: str, token: str, expires: int) -> None:
        now = self._clock()
        self._purge(now)
        kept = self._bound.get(holder, {})
        kept[token] = int(expires)  # bound again: the new expiry stands
        # The MAX_BOUND expiring last, ties by token: a sorted set's order in Redis.
        live = sorted(((e, t) for t, e in kept.items() if e > now), reverse=True)[:MAX_BOUND]
        if live:
            self._bound[holder] = {t: e for e, t in live}
        else:
            self._bound.pop(holder, None)

    async def bound(self, holder: str) -> list[str]:
        now = self._clock()
        kept = self._bound.get(holder, {})
        return [t for e, t in sorted(((e, t) for t, e in kept.items()), reverse=True) if e > now]

    # --- health -------------------------------------------------------------------------
    async def ping(self) -> None:
        return None

    async def close(self) -> None:
        return None


def _at_least(name: str, value: int, minimum: int) -> None:
    if value < minimum:
        raise ValueError(f"{name} must be at least {minimum}, not {value}")
