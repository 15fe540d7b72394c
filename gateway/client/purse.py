"""A paying session's money: what it may spend, what it has paid, what is under way.

Every payment goes through `Purse.spending`: the limits are checked before
any coin is touched, the price is held against the total while the payment
is out, and the wallet's coins are spent, freed or kept reserved by how the
delivery ended. One payment at a time goes to a resource (or a tab), so a
grant or top-up that a concurrent request bought is used, not bought again.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import weakref
from collections.abc import AsyncIterator

import aiohttp
from yarl import URL

from gateway.client.challenge import Challenge
from gateway.client.errors import PaymentNotSettled, PaymentRefused, SpendingLimitExceeded
from gateway.client.proofs import refresh_proofs
from gateway.client.responses import Payment
from gateway.client.tokens import StoredToken, origin_of
from gateway.client.wallet import PreparedPayment, Wallet


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

    @contextlib.asynccontextmanager
    async def spending(
        self, url: URL, server: str, price: int, http: aiohttp.ClientSession | None
    ) -> AsyncIterator[PreparedPayment]:
        """A payment of `price` to `server` (identity key hex), within the limits;
        the block delivers it. `http` fetches fresh proofs when a chain URL is set.

        Delivered: its coins are spent. Refused, or never sent: they are free
        again. Lost on the way: they stay reserved (PaymentNotSettled).
        """
        self.check(price, url)  # before any coin is touched
        self._in_flight += price
        try:
            if self.chain_url and http is not None:
                await refresh_proofs(self.wallet, http, self.chain_url)
            prepared = self.wallet.prepare_payment(server, price)
            try:
                yield prepared
            except PaymentRefused:
                self.wallet.release(prepared.txid)
                raise
            except aiohttp.ClientConnectorError:
                self.wallet.release(prepared.txid)  # never connected: nothing was sent
                raise
            except (aiohttp.ClientError, TimeoutError) as exc:
                raise PaymentNotSettled(
                    "connection-lost", f"{type(exc).__name__}: {exc}", txid=prepared.txid
                ) from exc
            self.wallet.settle(prepared.txid)
            self.spent += price
        finally:
            self._in_flight -= price

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
