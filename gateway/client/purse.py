"""A paying session's money: what it may spend, what it has paid, what is under way.

Every payment goes through `Purse.pay`: the limits are checked before any
coin is touched, the price is held against the total while the payment is
out, a payment still pending for the same purpose is sent again instead of
a new one, and the wallet's coins are spent, freed, set aside or kept
reserved by how the delivery ended. One payment at a time goes to a resource (or a tab), so a
grant or top-up that a concurrent request bought is used, not bought again.
"""

from __future__ import annotations

import asyncio
import math
import weakref
from collections.abc import Awaitable, Callable
from typing import TypeVar

import aiohttp
from yarl import URL

from gateway.client.challenge import Challenge
from gateway.client.errors import (
    NotDelivered,
    PaymentNotSettled,
    PaymentRefused,
    SpendingLimitExceeded,
)
from gateway.client.proofs import refresh_proofs
from gateway.client.records import PreparedPayment, Purpose
from gateway.client.responses import Payment
from gateway.client.tokens import StoredToken, canonical_path, origin_of
from gateway.client.wallet import Wallet

T = TypeVar("T")

# Refusals caused by a coin the payment spends: its proof is not one the
# gateway's chain knows (a devnet restarted, a wallet funded on another
# chain), or it is spent already. Gateway reasons, then ARC's.
COIN_FAULTS = frozenset(
    {
        "unknown-merkle-root",
        "bad-merkle-path",
        "missing-ancestor",
        "double-spend",
        "invalid-inputs",
        "missing-ancestors",
        "invalid-merkle-roots",
        "invalid-beef",
        "frozen-input",
    }
)
REBUILDS = 3  # payments built again after a coin was refused, per purchase


class Purse:
    """Spending limits and the record of payments (satoshis; miners' fees not counted)."""

    def __init__(
        self,
        wallet: Wallet,
        *,
        max_per_request: int | None = None,
        max_total: int | None = None,
        top_up: int | None = None,
        chain_url: str | None = None,
    ) -> None:
        """As `PayingSession` takes them; ValueError if `top_up` is under 1 satoshi."""
        if top_up is not None and top_up < 1:
            raise ValueError("top_up must be at least 1 satoshi")
        self.wallet = wallet
        self.max_per_request = max_per_request
        self.max_total = max_total
        self.top_up_at_least = top_up
        self.chain_url = chain_url
        self.payments: list[Payment] = []
        self.spent = 0  # satoshis paid to gateways (payments taken)
        # Every payment handed over in this session that may have been paid:
        # taken, in flight, unsettled, or refused for a coin (a gateway that
        # broadcast it and lied has it). txid -> satoshis, held against max_total.
        self._committed: dict[str, int] = {}
        # One payment at a time per resource (and per tab, for top-ups).
        self._locks: weakref.WeakValueDictionary[tuple[str, str], asyncio.Lock] = (
            weakref.WeakValueDictionary()
        )

    @property
    def fees(self) -> int:
        """Satoshis paid to miners for the payments recorded."""
        return sum(p.fee for p in self.payments)

    def price(self, challenge: Challenge) -> int:
        """What to pay, in satoshis: the price, or for a tab the top-up preferred."""
        if not challenge.for_tab:
            return challenge.satoshis
        amount = max(challenge.satoshis, self.top_up_at_least or 0)
        terms = challenge.tab
        if terms is not None and terms.most_satoshis is not None and terms.balance is not None:
            # Enough for this request, should the smallest top-up not be.
            amount = max(amount, math.ceil(terms.most_satoshis - terms.balance))
        return amount

    def check(self, price: int, url: URL) -> None:
        """SpendingLimitExceeded if paying `price` for `url` would pass a limit."""
        if self.max_per_request is not None and price > self.max_per_request:
            raise SpendingLimitExceeded(
                "per-request", price, self.max_per_request, self.spent, str(url)
            )
        committed = sum(self._committed.values())
        if self.max_total is not None and committed + price > self.max_total:
            raise SpendingLimitExceeded("total", price, self.max_total, committed, str(url))

    def lock(self, url: URL, challenge: Challenge) -> asyncio.Lock:
        """The lock a payment for `challenge` at `url` is made under (per resource,
        per route for a route-wide grant, per tab)."""
        # A tab is topped up once however many of its routes ran it dry.
        what = f"tab {challenge.scope}" if challenge.for_tab else _bought(url, challenge)
        lock = self._locks.get((origin_of(url), what))
        if lock is None:
            lock = self._locks[(origin_of(url), what)] = asyncio.Lock()
        return lock

    def purpose(
        self, url: URL, challenge: Challenge, method: str, tab: StoredToken | None = None
    ) -> Purpose:
        """What a payment for `challenge` at `method` `url` buys, as the gateway
        counts a purchase: the grant's scope (a resource, or a whole route for a
        route-wide grant) and the method, or a top-up of `tab` (None: a new
        tab) for the challenge's tab scope."""
        if challenge.for_tab:
            what = f"tab {challenge.scope} {tab.tab if tab is not None else 'new'}"
        else:
            what = f"{method} {_bought(url, challenge)}"
        return Purpose(origin_of(url), what, challenge.server)

    async def pay(
        self,
        url: URL,
        purpose: Purpose,
        price: int,
        http: aiohttp.ClientSession | None,
        deliver: Callable[[PreparedPayment, bool], Awaitable[T]],
        *,
        since: float | None = None,
        keep: Callable[[T], object] | None = None,
    ) -> tuple[PreparedPayment, T]:
        """Pay `price` satoshis for `purpose` within the limits: `deliver(prepared,
        resent)` hands the payment over (`resent`: it may have been taken
        before) and returns what the gateway gave for it, and
        `keep(result)` stores its grant before the payment counts as taken.
        `http` fetches fresh proofs when a chain URL is set.

        A payment made earlier for the same purpose whose outcome is still
        unknown is sent again as it is: never a second one (if the gateway
        says plainly it never took it, a new one is made). SettledMeanwhile
        if another process's payment for it was taken at or after `since`
        (its grant is in the wallet). Taken: its coins are spent. Refused:
        they are free again; a coin the gateway refused for its proof,
        naming the block, is set aside with the reason and the payment built
        again from the others (InsufficientFunds says so when none are left);
        one refused as spent elsewhere is set aside and the refusal raised.
        Sent but not answered: it stays pending (PaymentNotSettled).
        SpendingLimitExceeded before any coin is touched; every payment that
        may have been paid counts against `max_total`.
        """
        self.check(price, url)
        if self.chain_url and http is not None:
            await refresh_proofs(self.wallet, http, self.chain_url)
        resent_refusals = 0
        for _ in range(REBUILDS + 2):
            found = self.wallet.payment_for(purpose, price, since=since)
            if found is None:
                raise SettledMeanwhile(purpose)
            prepared, resent = found
            if prepared.txid not in self._committed:
                try:
                    self.check(prepared.satoshis, url)
                except SpendingLimitExceeded:
                    if not resent:
                        self.wallet.release(prepared.txid)  # never sent
                    raise
                self._committed[prepared.txid] = prepared.satoshis
            try:
                result = await deliver(prepared, resent)
            except PaymentRefused as refused:
                if self._refused(prepared, refused, purpose):
                    continue  # a coin was the cause: build it again from the others
                if resent and refused.reason not in ("payment-reused", "grant-expired"):
                    # An earlier payment the gateway says plainly it never took
                    # (stale now, or its key changed): the coins are free and
                    # this request is still to be paid, once, with a new one.
                    resent_refusals += 1
                    if resent_refusals == 1:
                        continue
                raise
            except NotDelivered as lost:
                if resent:  # handed over before: it may still have been taken
                    raise PaymentNotSettled(lost.reason, lost.detail, txid=lost.txid) from lost
                self.wallet.release(prepared.txid)  # nothing ever left
                self._committed.pop(prepared.txid, None)
                raise
            if keep is not None:
                keep(result)  # the grant is in the wallet before the payment counts as taken
            self.wallet.settle(prepared.txid)
            self.spent += prepared.satoshis
            return prepared, result
        raise PaymentRefused(
            "coins-refused",
            f"{purpose.origin} refused {REBUILDS + 1} payments for the wallet's coins; "
            "`farebox wallet coins` lists the coins set aside",
        )

    def _refused(
        self, prepared: PreparedPayment, refused: PaymentRefused, purpose: Purpose
    ) -> bool:
        """Account for a refused payment; True if a coin of ours was the cause,
        shown by the block the gateway named, and the payment should be built
        again from the other coins."""
        if refused.reason == "grant-expired":
            # The gateway took this transaction long ago: its coins are spent.
            self.wallet.settle(prepared.txid)
            return False
        if refused.reason == "payment-reused":
            # The gateway holds this txid for something else: it may be on the
            # network or may not. Kept pending (the chain settles it, or
            # `farebox wallet coins --abandon` frees it); never spent again.
            return False
        if refused.reason not in COIN_FAULTS:
            self.wallet.release(prepared.txid)
            self._committed.pop(prepared.txid, None)
            return False
        why = (
            f"{purpose.origin} refused payment {prepared.txid} ({refused.reason}): {refused.detail}"
        )
        height, root = refused.problem.get("height"), refused.problem.get("merkle_root")
        named: set[tuple[str, int]] = set()
        if isinstance(height, int) and isinstance(root, str):
            named = set(prepared.inputs) & self.wallet.proven_by(height, root)
        if named:
            # Our coin's proof rests on a block the gateway's chain does not
            # have: what the gateway says can be checked. Build it again.
            self.wallet.set_aside(prepared.txid, named, why)
            self._committed.pop(prepared.txid, None)
            return True
        # Unverifiable (spent elsewhere, say): set aside, but never rebuilt on
        # a gateway's word alone, which could be a lie to draw more payments.
        self.wallet.set_aside(prepared.txid, prepared.inputs, why)
        return False

    def record(
        self,
        url: URL,
        method: str,
        prepared: PreparedPayment,
        price: int,
        via: str,
        grant: StoredToken | None,
    ) -> Payment:
        """Add a delivered payment (`price` satoshis, `via` "headers" or "pay-endpoint")
        to `payments`; returns it."""
        payment = Payment(
            url=str(url),
            method=method,
            txid=prepared.txid,
            satoshis=price,
            fee=prepared.fee,
            via=via,
            grant=grant,
        )
        self.payments.append(payment)
        return payment


class SettledMeanwhile(Exception):
    """Another process's payment for this purpose was taken while this one
    waited: its grant is in the wallet; nothing is paid here."""

    def __init__(self, purpose: Purpose) -> None:
        super().__init__(f"{purpose.origin} {purpose.what}: bought meanwhile")
        self.purpose = purpose


def _bought(url: URL, challenge: Challenge) -> str:
    """What the gateway sells at `url`: the 402's grant scope (with what it
    covers), else the request's canonical path."""
    if challenge.scope and challenge.covers:
        return f"{challenge.covers} {challenge.scope}"
    return canonical_path(url) or url.raw_path
