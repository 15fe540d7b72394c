"""Prepaid tabs: what one metered request may cost, and what it did cost.

A tab is a balance a client tops up by paying (gateway.payments.cashier) and
draws on with a tab token. Amounts on a tab are millisatoshis (msat), so
per-MB and fractional-unit charges add up exactly; headers show satoshis
with up to three decimals.

One metered request: hold the most it may cost (`most` units at the unit
price) → proxy, with a `Metering` the proxy reports into → settle the actual
charge, which returns the rest of the hold. Only answers below 400 that
reached the client are charged:

- per request: one unit;
- per unit: the units the upstream reports in its header (capped at `most`);
- per MB: the bytes delivered (10^6 bytes a MB), rounded up to a msat; a
  body longer than `most` MB is cut there.

Charges are rounded up to a whole msat. A client that hangs up pays nothing
(per MB: only what was delivered).
"""

from __future__ import annotations

import hashlib
import logging
import math
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation

from multidict import CIMultiDict

from gateway.policy import Match
from gateway.policy.schema import MB, Meter

log = logging.getLogger("farebox.tabs")

MSAT = 1000  # msat per satoshi

CHARGE = "X-Farebox-Charge"  # satoshis this request costs
BALANCE = "X-Farebox-Balance"  # satoshis left on the tab after it
CHARGE_LIMIT = "X-Farebox-Charge-Limit"  # per MB, length unknown: the most it may cost
TAB = "X-Farebox-Tab"


def tab_for_payment(txid: str) -> str:
    """The id of the tab a payment opens: derived, so a resent payment finds
    the same tab, whoever handles it."""
    return "t" + hashlib.sha256(b"farebox-tab\n" + txid.encode()).hexdigest()[:31]


def tab_scope(match: Match) -> str:
    """What a tab token covers: every metered route of the service."""
    return f"{match.service.prefix}/**"


def sats(msat: int) -> str:
    """12345 msat → '12.345'; 5000 → '5'."""
    whole, part = divmod(msat, MSAT)
    return str(whole) if not part else f"{whole}.{part:03d}".rstrip("0")


def most_msat(meter: Meter, unit_msat: int) -> int:
    return math.ceil(meter.most * unit_msat)


@dataclass(slots=True)
class Metering:
    """The charge of one request, told by the proxy as the answer passes."""

    meter: Meter
    unit_msat: int  # price of one unit
    held: int  # msat held for this request
    balance: int  # msat left on the tab while it is held
    status: int | None = None  # the answer's status, once it started
    units: Decimal = Decimal(0)  # per unit: what the upstream reported
    sent: int = 0  # body bytes handed to the client
    delivered: bool = False  # the whole answer went out
    bodiless: bool = False  # a HEAD request: no body will be delivered

    async def answered(self, status: int) -> None:
        """Nothing to do before the headers: the charge is settled at the end."""

    def begin(self, status: int, headers: CIMultiDict[str]) -> None:
        """The upstream answered: read its units, add the charge headers."""
        for name, value in self.owed(status, headers):
            headers[name] = value

    def owed(self, status: int, headers: CIMultiDict[str]) -> list[tuple[str, str]]:
        """`begin` without adding: read the upstream's units from `headers`
        and return the charge headers the answer carries."""
        self.status = status
        if status < 400 and self.meter.per == "unit":
            self.units = self._reported(headers.getall(self.meter.units_header, []))
        expected = self._charge_for(0 if self.bodiless else _length(headers))
        if expected is None:
            return [(CHARGE_LIMIT, sats(self.held)), (BALANCE, sats(self.balance))]
        return [(CHARGE, sats(expected)), (BALANCE, sats(self.balance + self.held - expected))]

    @property
    def by_bytes(self) -> bool:
        """Charged by the bytes delivered (per MB): the proxy keeps its buffers small."""
        return self.meter.per == "mb"

    def allow(self, size: int) -> int:
        """How many of the next `size` body bytes may go to the client."""
        if self.meter.per != "mb":
            return size
        limit = math.floor(self.meter.most * MB)
        allowed = max(0, min(size, limit - self.sent))
        if allowed < size:
            log.warning(
                "metered answer longer than its route's most (%s MB): cut at %d bytes",
                self.meter.most,
                limit,
            )
        self.sent += allowed
        return allowed

    def end(self) -> None:
        self.delivered = True

    def withdraw(self) -> None:
        """The answer was held back whole (a signed answer refused): charge nothing."""
        self.status, self.sent, self.delivered = None, 0, False

    def charge(self) -> int:
        """What to settle: nothing unless a good answer reached the client."""
        if self.status is None or self.status >= 400:
            return 0
        if self.meter.per == "mb":
            return self._charge_for(self.sent) or 0
        if not self.delivered:
            return 0
        return self._charge_for(None) or 0

    def _charge_for(self, length: int | None) -> int | None:
        """The charge if `length` body bytes are delivered; None if unknown yet."""
        if self.status is None or self.status >= 400:
            return 0
        if self.meter.per == "request":
            exact: Decimal | int = self.unit_msat
        elif self.meter.per == "unit":
            exact = self.units * self.unit_msat
        elif length is None:
            return None
        else:
            exact = Decimal(min(length, math.floor(self.meter.most * MB))) * self.unit_msat / MB
        return min(self.held, math.ceil(exact))

    def _reported(self, values: list[str]) -> Decimal:
        if len(values) != 1:
            log.warning(
                "upstream sent %d %s headers on a per-unit route: charged 0 units",
                len(values),
                self.meter.units_header,
            )
            return Decimal(0)
        try:
            units = Decimal(values[0].strip())
        except InvalidOperation:
            units = Decimal(-1)
        if not units.is_finite() or units < 0:
            log.warning(
                "upstream sent %s: %r, not a number of units: charged 0",
                self.meter.units_header,
                values[0][:40],
            )
            return Decimal(0)
        if units > self.meter.most:
            log.warning(
                "upstream reported %s units, more than the route's most (%s): charged %s",
                units,
                self.meter.most,
                self.meter.most,
            )
            return self.meter.most
        return units


@dataclass(slots=True)
class PerRequest(Metering):
    """`Metering` for a per-request meter with its charge worked out once
    (`good`: min(held, ceil(unit_msat)), `owes`: the same in satoshis): the
    same headers and charge, without reading the answer's length on every
    request (the express path's metered answers). tests/test_tabs.py holds
    it to `Metering` over statuses, prices, holds and deliveries."""

    good: int = 0  # msat charged for a good answer delivered
    owes: str = "0"  # sats(good), the charge header's value

    @staticmethod
    def worked_out(unit_msat: int, held: int) -> tuple[int, str]:
        """(good, owes) for this unit price and hold: one unit, at most the hold."""
        good = min(held, math.ceil(unit_msat))
        return good, sats(good)

    def owed(self, status: int, headers: CIMultiDict[str]) -> list[tuple[str, str]]:
        self.status = status
        if status >= 400:  # charged nothing
            return [(CHARGE, "0"), (BALANCE, sats(self.balance + self.held))]
        return [(CHARGE, self.owes), (BALANCE, sats(self.balance + self.held - self.good))]

    def charge(self) -> int:
        if self.status is None or self.status >= 400 or not self.delivered:
            return 0
        return self.good


def _length(headers: CIMultiDict[str]) -> int | None:
    value = headers.get("Content-Length")
    return int(value) if value is not None and value.isdigit() else None
