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
from gateway.client.tokens import StoredToken, origin_of
from gateway.client.wallet import Wallet

T = TypeVar("T")

# Refusals that say the gateway has the transaction: its coins are spent.
TAKEN = frozenset({"payment-reused", "grant-expired"})
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
        self.spent = 0  # satoshis paid to gateways
        self._in_flight = 0  # prices of payments under way, held against max_total
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
        committed = self.spent + self._in_flight
        if self.max_total is not None and committed + price > self.max_total:
            raise SpendingLimitExceeded("total", price, self.max_total, committed, str(url))

    def lock(self, url: URL, challenge: Challenge) -> asyncio.Lock:
        """The lock a payment for `challenge` at `url` is made under (per resource, per tab)."""
        # A tab is topped up once however many of its routes ran it dry.
        what = f"tab {challenge.scope}" if challenge.for_tab else url.raw_path
        lock = self._locks.get((origin_of(url), what))
        if lock is None:
            lock = self._locks[(origin_of(url), what)] = asyncio.Lock()
        return lock

    def purpose(self, url: URL, challenge: Challenge, tab: StoredToken | None = None) -> Purpose:
        """What a payment for `challenge` at `url` buys: the resource, or a top-up
        of `tab` (None: a new tab) for the challenge's tab scope."""
        if challenge.for_tab:
            what = f"tab {challenge.scope} {tab.tab if tab is not None else 'new'}"
        else:
            what = url.raw_path
        return Purpose(origin_of(url), what, challenge.server)

    async def pay(
        self,
        url: URL,
        purpose: Purpose,
        price: int,
        http: aiohttp.ClientSession | None,
        deliver: Callable[[PreparedPayment], Awaitable[T]],
    ) -> tuple[PreparedPayment, T]:
        """Pay `price` satoshis for `purpose` within the limits: `deliver(prepared)`
        hands the payment over and returns what the gateway gave for it.
        `http` fetches fresh proofs when a chain URL is set.

        A payment made earlier for the same purpose whose outcome is still
        unknown is sent again as it is: never a second one. Taken (`deliver`
        returned): its coins are spent. Refused: they are free again, or, if
        the gateway refused a coin (its proof, or spent elsewhere), that coin
        is set aside with the reason and the payment built again from the
        others (InsufficientFunds says so when none are left). Sent but not
        answered: it stays pending (PaymentNotSettled). SpendingLimitExceeded
        before any coin is touched.
        """
        self.check(price, url)
        self._in_flight += price
        try:
            if self.chain_url and http is not None:
                await refresh_proofs(self.wallet, http, self.chain_url)
            for _ in range(REBUILDS + 1):
                prepared = self.wallet.pending_for(purpose)
                resent = prepared is not None
                if prepared is None:
                    prepared = self.wallet.prepare_payment(purpose.server, price, purpose=purpose)
                elif prepared.satoshis > price:
                    self.check(prepared.satoshis, url)  # the price fell since: still within limits
                try:
                    result = await deliver(prepared)
                except PaymentRefused as refused:
                    if not self._refused(prepared, refused, purpose):
                        raise
                    continue  # a coin was the cause: build it again from the others
                except NotDelivered as lost:
                    if resent:  # handed over before: it may still have been taken
                        raise PaymentNotSettled(lost.reason, lost.detail, txid=lost.txid) from lost
                    self.wallet.release(prepared.txid)  # nothing ever left
                    raise
                self.wallet.settle(prepared.txid)
                self.spent += prepared.satoshis
                return prepared, result
            raise PaymentRefused(
                "coins-refused",
                f"{purpose.origin} refused {REBUILDS + 1} payments for the wallet's coins; "
                "`farebox wallet coins` lists the coins set aside",
            )
        finally:
            self._in_flight -= price

    def _refused(
        self, prepared: PreparedPayment, refused: PaymentRefused, purpose: Purpose
    ) -> bool:
        """Account for a refused payment; True if one of its coins was the cause
        (set aside now) and the payment should be built again."""
        if refused.reason in TAKEN:
            # The gateway has this transaction (for something else, or its
            # grant has ended): its coins are spent all the same.
            self.wallet.settle(prepared.txid)
            return False
        if refused.reason not in COIN_FAULTS:
            self.wallet.release(prepared.txid)
            return False
        culprits = set(prepared.inputs)
        height, root = refused.problem.get("height"), refused.problem.get("merkle_root")
        if isinstance(height, int) and isinstance(root, str):
            # The gateway named the block it does not know: only coins proven by it.
            culprits = culprits & self.wallet.proven_by(height, root) or culprits
        why = f"{purpose.origin} refused it ({refused.reason}): {refused.detail}"
        self.wallet.set_aside(prepared.txid, culprits, why)
        return True

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
