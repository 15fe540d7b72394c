"""What this request costs now: the policy's price, converted, less a proven concession.

Every intake and every challenge asks here, so a price is worked out one way:
a route's `price` (satoshis, or fiat cents converted at the current rate,
`rates.quote`), a metered route's unit price in msat (`rates.msat_quote`),
and a tab's smallest top-up. A concession counts only when the request
carries a credential that verifies for one the route offers (concessions.py).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from gateway.policy import Match, Policy
from gateway.policy.concessions import Eligibility
from gateway.pricing.concessions import HEADER, discounted, eligible, reduced
from gateway.pricing.rates import Quote, Rates, msat_quote, quote


def offered(policy: Policy, match: Match) -> tuple[Eligibility, ...]:
    """The concessions the matched route honours, as loaded with the policy."""
    known = policy.concessions
    return tuple(known[n] for n in match.route.route.concessions if n in known)


def proven(policy: Policy, headers: Mapping[str, str], match: Match) -> Eligibility | None:
    """The concession this request's credential proves, or None."""
    if not match.route.route.concessions:
        return None
    return eligible(headers.get(HEADER), offered(policy, match))


async def price(
    policy: Policy, rates: Rates | None, headers: Mapping[str, str], match: Match
) -> Quote:
    """The price of one purchase of the matched route (satoshis in `Quote.satoshis`).

    Raises RateUnavailable when a fiat price has no fresh rate.
    """
    quoted = await quote(match.route.route.price, rates)
    concession = proven(policy, headers, match)
    return quoted if concession is None else discounted(quoted, concession)


def unit_price_now(match: Match) -> tuple[int, int, Any] | None:
    """`unit_price` when it is known without asking: a price in satoshis on a
    route with no concessions (nothing a request could prove changes it);
    else None."""
    route = match.route.route
    if route.price.currency is not None or route.concessions:
        return None
    full = route.price.satoshis * 1000  # as msat_quote quotes satoshis
    return full, full, None


async def unit_price(
    policy: Policy, rates: Rates | None, headers: Mapping[str, str], match: Match
) -> tuple[int, int, Any]:
    """A metered route's unit price in msat: (to pay, before concession, concession or None)."""
    known = unit_price_now(match)
    if known is not None:
        return known
    full = await msat_quote(match.route.route.price, rates)
    concession = proven(policy, headers, match)
    if concession is None:
        return full, full, None
    return reduced(full, concession), full, concession


async def top_up(rates: Rates | None, match: Match) -> Quote:
    """The smallest payment that opens or tops up a tab of the matched service."""
    tabs = match.service.service.tabs
    assert tabs is not None, "only metered routes have tabs"
    return await quote(tabs.top_up, rates)
