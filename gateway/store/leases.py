"""Tab holds: what one metered request takes from its tab, and gives back.

A metered request holds the most it may cost, is proxied, then settles what
it really cost (pipeline/metering.py). Where the hold is kept depends on
where the tab lives:

- `Direct`: in the store, per request (`reserve`, then `settle`). Right for
  the memory store, where that is a dict update in this process.
- `Leases`: where the tab lives in a shared store (Redis), two store calls per
  request cost more than the rest of the request. A worker leases a slice
  of the tab's balance (the `lease` script, store/redis.py) and serves holds
  from it in memory; what it charged goes back in one call per tab every
  `flush` seconds, batched with every other tab's. A lease unused for `idle`
  seconds is given back.

Money stays exact across workers and machines:

- A slice is money taken out of the tab's balance, atomically, so no two
  workers spend the same satoshi; a hold is taken from the slice's free part
  only, and nothing is given back while a request holds it.
- A worker short of money while other workers hold slices posts a recall on
  the tab and waits (at most `recall` seconds): each lease answers at its
  next sync by giving back everything not in flight, so the request is
  refused only when no free money is left anywhere — 1,000 requests at once
  on two machines against a tab worth 100 serve exactly 100
  (tests/test_shared_state.py).
- A lease outlives a worker that stops syncing by `ttl` seconds, then goes
  back to the tab by itself (the tab scripts sweep expired holds first): a
  crash never keeps the payer's money. What the dead worker charged since
  its last sync is not taken: the payer keeps it.
- A worker serves from memory only for `5 * flush` seconds after a sync that
  answered, and nothing after a call that failed or was cut short until one
  answers: one cut off from the store (or stalled) stops long before the
  store gives its slice back to others.
- Charges go as a running total per lease, and each call carries a rising
  sequence number: a batch resent after a lost reply, or a call that ran
  after its caller gave up on it, is never charged twice.
- Each lease has an id of its own; one that reaches 0 in the store is over,
  and the next hold on that tab starts a new one.

The balance shown (the X-Farebox-Balance header) is what this worker knows:
the tab's spendable balance at its last sync plus its slice's free part;
`balance()` counts every lease as the payer's, less what this worker has
charged or holds; other workers' charges show within `flush` seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import time
from dataclasses import dataclass, field
from typing import Protocol

from gateway.store import Leased, LeaseSync, StoreUnavailable

log = logging.getLogger("farebox.tabs")

HOLD_TTL = 3600  # seconds a per-request hold lives if its worker dies before settling
FLUSH = 0.05  # seconds between a lease's syncs while in use
IDLE = 0.5  # seconds unused before a lease is given back
LEASE_TTL = 30  # seconds a lease outlives a worker that stopped syncing
RECALL = 2.0  # seconds a short request waits for other workers to give back
# Holds a lease may still give out while its periodic sync is on the wire
# (each the size of the last hold): the sync keeps that much out of what a
# recall takes back, so they are covered whatever the store answers. Enough
# for a few milliseconds of a busy worker; without it every request arriving
# during a sync waited for Redis, 20 times a second.
SYNC_HOLDS = 256


class Exhausted(Exception):
    """The tab does not cover the hold; `balance` msat is what it has (as known here)."""

    def __init__(self, balance: int) -> None:
        super().__init__(balance)
        self.balance = balance


@dataclass(slots=True)
class Hold:
    """One request's hold on a tab (msat)."""

    tab: str
    amount: int  # held for this request
    balance: int  # left on the tab while held, as this worker knows it
    reservation: str = ""  # Direct: the store's reservation id
    lease: _Lease | None = None  # Leases: the slice it was taken from


class TabHolds(Protocol):
    """What metering needs: hold, settle, and the payer's balance."""

    async def hold(self, tab: str, amount: int) -> Hold:
        """Hold `amount` msat on `tab`. Raises Exhausted, StoreUnavailable."""
        ...

    def take(self, tab: str, amount: int) -> Hold | None:
        """`hold` when it needs no store call (a lease's slice in memory covers
        it), else None: then `hold` it. The metered hot path's way in."""
        ...

    async def settle(self, hold: Hold, charge: int) -> None:
        """Charge `charge` msat (at most the hold) and free the rest. Raises StoreUnavailable."""
        ...

    def settled(self, hold: Hold, charge: int) -> bool:
        """`settle` when it needs no store call; False: `settle` it."""
        ...

    async def balance(self, tab: str) -> int | None:
        """The payer's balance in msat (held amounts excluded); None: no such tab."""
        ...

    async def close(self) -> None: ...


class Reserving(Protocol):
    """The store's per-request holds (store/__init__.py, `Store`)."""

    async def reserve(self, tab: str, amount: int, reservation: str, ttl: int) -> int | None: ...

    async def settle(self, tab: str, reservation: str, charge: int) -> int: ...

    async def balance(self, tab: str) -> int | None: ...


class Leasing(Protocol):
    """A shared store's leases (store/redis.py `lease`)."""

    async def lease(self, tab: str, lease: str, sync: LeaseSync) -> Leased | None: ...

    async def balance(self, tab: str) -> int | None: ...


class Direct:
    """Every hold in the store, per request."""

    def __init__(self, store: Reserving) -> None:
        self._store = store

    async def hold(self, tab: str, amount: int) -> Hold:
        reservation = os.urandom(16).hex()  # as unique as uuid4, without its object
        left = await self._store.reserve(tab, amount, reservation, HOLD_TTL)
        if left is None:
            raise Exhausted(await self._store.balance(tab) or 0)
        return Hold(tab, amount, left, reservation)

    def take(self, tab: str, amount: int) -> Hold | None:
        return None  # every hold is the store's

    async def settle(self, hold: Hold, charge: int) -> None:
        await self._store.settle(hold.tab, hold.reservation, charge)

    def settled(self, hold: Hold, charge: int) -> bool:
        return False

    async def balance(self, tab: str) -> int | None:
        return await self._store.balance(tab)

    async def close(self) -> None:
        """Nothing kept here."""


@dataclass(slots=True)
class _Lease:
    """This worker's slice of one tab (msat); one id in the store for its life."""

    id: str
    amount: int = 0  # what the lease holds in the store, as of the last sync
    charged: int = 0  # everything charged on it (sent as a total: taken once)
    taken: int = 0  # of which the store has taken, as of the last sync
    inflight: int = 0  # held by requests in flight
    known: int = 0  # the tab's spendable balance at the last sync
    # Served from memory only until then: a few syncs after the last that
    # answered, so a worker cut off from the store (or stalled) stops serving
    # what it cannot charge long before the store gives its slice back.
    valid_until: float = 0.0
    uncertain: bool = False  # a call failed or was cut short: what it did is unknown
    recalled_until: float = 0.0  # another worker is short: give back what is free
    unit: int = 0  # the last hold's amount: what SYNC_HOLDS counts in
    budget: int = 0  # msat still to be held from memory while a periodic sync is out
    last_use: float = field(default_factory=time.monotonic)
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)  # one call on it at a time
    # Done when the call under way answers: holds beyond a periodic sync's
    # budget wait for it (it may be giving back the free part they would
    # take), all woken at once, not one by one.
    call: asyncio.Future[None] | None = None

    @property
    def free(self) -> int:
        return self.amount - (self.charged - self.taken) - self.inflight

    def covers(self, amount: int, now: float) -> bool:
        """Whether a hold of `amount` may be taken from memory now."""
        return not self.uncertain and now < self.valid_until and self.free >= amount


class Leases:
    """Holds served from this worker's slices of tabs in a shared store."""

    def __init__(
        self,
        store: Leasing,
        *,
        flush: float = FLUSH,
        idle: float = IDLE,
        ttl: int = LEASE_TTL,
        recall: float = RECALL,
    ) -> None:
        self._store = store
        self._id = "lease:" + os.urandom(12).hex()  # this worker, in the tab's held list
        self._seq = itertools.count(1)  # small: Lua reads numbers as doubles
        self._lives = itertools.count(1)  # each lease of a tab has an id of its own
        self._flush, self._idle, self._ttl, self._recall = flush, idle, ttl, recall
        self._valid = min(ttl / 2, 5 * flush)  # seconds a sync lets a lease serve from memory
        self._leases: dict[str, _Lease] = {}
        self._task: asyncio.Task[None] | None = None
        self._closed = False

    async def hold(self, tab: str, amount: int) -> Hold:
        if self._closed:
            raise StoreUnavailable("this worker is stopping")
        deadline = time.monotonic() + self._recall  # from arrival, however long the queue
        while True:
            taken = self.take(tab, amount)  # in memory: the common case
            if taken is not None:
                return taken
            lease = self._lease(tab)
            if lease.call is not None:
                await asyncio.shield(lease.call)
                continue
            async with lease.lock:
                if self._leases.get(tab) is not lease:
                    continue  # given back while this waited: start over on the tab's lease now
                if lease.covers(amount, time.monotonic()):
                    return self._take(tab, lease, amount)
                leased = await self._sync(tab, lease, need=amount)
                if leased is None:
                    raise Exhausted(0)
                if lease.covers(amount, time.monotonic()):
                    return self._take(tab, lease, amount)
                if not leased.pending or time.monotonic() >= deadline:
                    raise Exhausted(leased.balance + max(lease.free, 0))
            # Another worker has not given back yet: it does at its next sync,
            # which this lease's lock must not hold up.
            await asyncio.sleep(self._flush / 2)

    def take(self, tab: str, amount: int) -> Hold | None:
        lease = self._leases.get(tab)
        if self._closed or lease is None or lease.uncertain:
            return None
        # `covers` and `_take` in one: every metered request passes here.
        now = time.monotonic()
        free = lease.amount - (lease.charged - lease.taken) - lease.inflight
        if now >= lease.valid_until or free < amount:
            return None
        if lease.call is not None:
            # A call is out: only a periodic sync's budget, which the store
            # keeps in the lease whatever it gives back, may be held now.
            if lease.budget < amount:
                return None
            lease.budget -= amount
        lease.inflight += amount
        lease.unit = amount
        lease.last_use = now
        return Hold(tab, amount, lease.known + free - amount, lease=lease)

    async def settle(self, hold: Hold, charge: int) -> None:
        self.settled(hold, charge)

    def settled(self, hold: Hold, charge: int) -> bool:
        """Always in memory: charges reach the store at the lease's next sync."""
        lease = hold.lease
        if lease is None:
            return True  # settled already: once, whatever calls it again
        hold.lease = None
        lease.inflight -= hold.amount
        lease.charged += max(0, min(charge, hold.amount))
        lease.last_use = time.monotonic()
        return True

    async def balance(self, tab: str) -> int | None:
        left = await self._store.balance(tab)
        lease = self._leases.get(tab)
        if left is None or lease is None:
            return left
        return max(0, left - (lease.charged - lease.taken) - lease.inflight)

    async def close(self) -> None:
        """Give every slice back (a worker stopping); what is left goes back by its ttl."""
        self._closed = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        try:
            await asyncio.gather(*(self._give_back(tab) for tab in list(self._leases)))
        except StoreUnavailable as exc:
            log.warning("could not give tab leases back (%s): they return in %d s", exc, self._ttl)

    # --- inside -----------------------------------------------------------------------

    def _lease(self, tab: str) -> _Lease:
        lease = self._leases.get(tab)
        if lease is None:
            lease = self._leases[tab] = _Lease(f"{self._id}:{next(self._lives)}")
            self._start()
        return lease

    def _take(self, tab: str, lease: _Lease, amount: int) -> Hold:
        lease.inflight += amount
        lease.unit = amount
        lease.last_use = time.monotonic()
        return Hold(tab, amount, lease.known + lease.free, lease=lease)

    async def _sync(
        self, tab: str, lease: _Lease, *, need: int = 0, release: bool = False
    ) -> Leased | None:
        """One call on the lease; the caller holds its lock.

        A periodic sync (no `need`, no `release`, no recall seen at the last
        sync) asks the store to keep a budget back from any recall, so that
        holds taken from it while the call is out are covered whatever the
        store answers; a short worker then waits for the next sync, which
        keeps none. Any other call stops holds from memory until it answers
        (it may give back the free part they would take)."""
        sent, charged = time.monotonic(), lease.charged
        budget = 0
        if need == 0 and not release and sent >= lease.recalled_until:
            budget = max(0, min(lease.free, lease.unit * SYNC_HOLDS))
        call = lease.call = asyncio.get_running_loop().create_future()
        lease.budget = budget
        try:
            leased = await self._store.lease(
                tab,
                lease.id,
                LeaseSync(
                    seq=next(self._seq),
                    charged=charged,
                    inflight=lease.inflight,
                    need=need,
                    expect=lease.amount,
                    release=release,
                    ttl=self._ttl,
                    recall=self._recall,
                    kept=budget,
                ),
            )
        except BaseException:
            # It may have run: nothing more from memory until a call answers.
            lease.uncertain = True
            raise
        finally:
            lease.call = None
            lease.budget = 0
            call.set_result(None)
        if leased is None:
            return None
        if leased.lost:
            log.warning(
                "the lease on tab %s had gone back to the tab (no sync for %d s): "
                "%d msat of charges were not taken",
                tab,
                self._ttl,
                charged - lease.taken,
            )
        lease.amount, lease.known = leased.held, leased.balance
        lease.taken = charged if leased.lost else leased.charged
        lease.uncertain = False
        lease.valid_until = sent + self._valid
        lease.recalled_until = sent + self._recall if leased.recalling else 0.0
        if leased.held == 0 and self._leases.get(tab) is lease:
            del self._leases[tab]  # over in the store; the next hold starts a new one
        return leased

    async def _give_back(self, tab: str) -> None:
        lease = self._leases.get(tab)
        if lease is None or lease.lock.locked():
            return  # a request is syncing it: it goes back once idle
        async with lease.lock:
            await self._sync(tab, lease, release=True)

    def _start(self) -> None:
        if self._task is None and not self._closed:
            self._task = asyncio.ensure_future(self._run())

    async def _run(self) -> None:
        """Sync leases in use every `flush` seconds, all in one batch; give idle ones back."""
        try:
            while self._leases:
                await asyncio.sleep(self._flush)
                now = time.monotonic()
                calls = []
                for tab, lease in list(self._leases.items()):
                    if lease.inflight == 0 and now - lease.last_use >= self._idle:
                        calls.append(self._give_back(tab))
                    elif (
                        lease.charged != lease.taken
                        or lease.inflight
                        or lease.uncertain
                        or (lease.free > 0 and now < lease.recalled_until)
                    ):
                        calls.append(self._locked_sync(tab, lease))
                results = await asyncio.gather(*calls, return_exceptions=True)
                failed = [r for r in results if isinstance(r, Exception)]
                if failed:
                    # Tried again next round; meanwhile nothing more is served
                    # from those leases' memory (they are uncertain).
                    log.warning("could not sync %d tab leases: %s", len(failed), failed[0])
        finally:
            # The loop ends only with no lease left, checked after its last
            # await: a hold coming later starts it again.
            self._task = None

    async def _locked_sync(self, tab: str, lease: _Lease) -> None:
        if lease.lock.locked() or self._leases.get(tab) is not lease:
            return  # a request is syncing it now, or it is over
        async with lease.lock:
            await self._sync(tab, lease)
