"""Turning a policy price into satoshis for one request.

A price is written in satoshis, or in US dollar or euro cents. A fiat price
is converted with the current BSV rate at the moment of the request, from a
rate source: fixed numbers from the configuration, or an HTTP feed that is
cached and refused once older than its staleness limit (never price with a
stale rate: the client would pay for the wrong amount).

Rounding: satoshis = ceil(cents / 100 / rate * 100,000,000), at least 1. A
payer never pays less than the fiat price at the quoted rate, and never more
than one satoshi above it.
"""

from __future__ import annotations

import asyncio
import math
import time
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any, Protocol

import aiohttp

from gateway.policy.schema import Price

SATOSHIS_PER_BSV = Decimal(100_000_000)


class RateUnavailable(Exception):
    """No rate fresh enough to price in fiat: priced fiat routes answer 503."""


@dataclass(frozen=True, slots=True)
class Rate:
    currency: str
    per_bsv: Decimal  # fiat units (dollars, euros) for one BSV
    as_of: float  # unix time the rate was observed


@dataclass(frozen=True, slots=True)
class Quote:
    satoshis: int
    rate: Rate | None = None  # set for a fiat price
    cents: Decimal | None = None
    full_satoshis: int | None = None  # the price before a concession
    concession: Any = None  # the gateway.concessions.Eligibility applied


class Rates(Protocol):
    async def rate(self, currency: str) -> Rate: ...


def satoshis_for(cents: Decimal, rate: Rate) -> int:
    exact = cents / 100 / rate.per_bsv * SATOSHIS_PER_BSV
    return max(1, math.ceil(exact))


async def quote(price: Price, rates: Rates | None) -> Quote:
    if price.currency is None:
        return Quote(price.satoshis)
    if rates is None:
        raise RateUnavailable(
            f"a {price.currency} price needs a rate source (rate_usd, rate_eur or rate_feed)"
        )
    assert price.cents is not None
    rate = await rates.rate(price.currency)
    return Quote(satoshis_for(price.cents, rate), rate, price.cents)


async def msat_quote(price: Price, rates: Rates | None) -> int:
    """One unit of a metered price in millisatoshis (rounded up, at least 1)."""
    if price.currency is None:
        return price.satoshis * 1000
    if rates is None:
        raise RateUnavailable(
            f"a {price.currency} price needs a rate source (rate_usd, rate_eur or rate_feed)"
        )
    assert price.cents is not None
    rate = await rates.rate(price.currency)
    return max(1, math.ceil(price.cents / 100 / rate.per_bsv * SATOSHIS_PER_BSV * 1000))


class FixedRates:
    """Rates written in the configuration (fiat units per BSV)."""

    def __init__(self, per_bsv: dict[str, Decimal]) -> None:
        self.per_bsv = per_bsv

    async def rate(self, currency: str) -> Rate:
        if currency not in self.per_bsv:
            raise RateUnavailable(f"no rate for {currency} is configured")
        return Rate(currency, self.per_bsv[currency], time.time())


class FeedRates:
    """Rates from an HTTP feed answering JSON such as {"USD": 41.2, "EUR": 38.0}
    (fiat units per BSV), fetched at most every `refresh` seconds and refused
    once the last good answer is older than `max_age`."""

    def __init__(
        self, url: str, *, max_age: float, refresh: float = 60.0, timeout: float = 5.0
    ) -> None:
        self.url = url
        self.max_age = max_age
        self.refresh = min(refresh, max_age / 2)
        self.timeout = aiohttp.ClientTimeout(total=timeout)
        self._rates: dict[str, Decimal] = {}
        self._as_of = 0.0
        self._tried = 0.0
        self._lock = asyncio.Lock()
        self._session: aiohttp.ClientSession | None = None

    async def rate(self, currency: str) -> Rate:
        if time.time() - self._tried >= self.refresh:
            async with self._lock:  # one fetch for every waiting request
                if time.time() - self._tried >= self.refresh:
                    await self._fetch()
        if time.time() - self._as_of > self.max_age:
            raise RateUnavailable(f"the rate feed has given no fresh rate for {self.max_age:.0f} s")
        if currency not in self._rates:
            raise RateUnavailable(f"the rate feed has no {currency} rate")
        return Rate(currency, self._rates[currency], self._as_of)

    async def _fetch(self) -> None:
        self._tried = time.time()
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=self.timeout)
        try:
            async with self._session.get(self.url) as r:
                if r.status != 200:
                    return
                data = await r.json(content_type=None)
        except (aiohttp.ClientError, TimeoutError, ValueError):
            return  # keep the last good rates until they are too old
        rates = {}
        if isinstance(data, dict):
            for currency, value in data.items():
                try:
                    number = Decimal(str(value))
                except InvalidOperation:
                    continue
                if isinstance(currency, str) and number.is_finite() and number > 0:
                    rates[currency.upper()] = number
        if rates:
            self._rates, self._as_of = rates, time.time()

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
