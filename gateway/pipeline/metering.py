"""A metered route: drawn from a prepaid tab, held, proxied, settled.

Hold the most the request may cost (`meter.most` units at the unit price),
proxy it, then settle what it really cost — one unit, the units the
upstream reports, or the bytes delivered — and return the rest of the
hold (pricing/tabs.py `Metering` counts). A payment on the request opens
or tops up the tab through the one intake first. `express` is `draw` for
the gateway's express path (a tab token alone), with as little per request
as the same decision allows.
"""

from __future__ import annotations

import logging
from typing import Protocol

from aiohttp import web
from multidict import CIMultiDict

from gateway.challenge.respond import tab_challenge
from gateway.edge import metrics
from gateway.edge.lane import LaneRequest, Ready
from gateway.edge.problems import payments_disabled
from gateway.errors import PaymentError
from gateway.payments.admission import Wanted
from gateway.payments.cashier import Accepted, Cashier
from gateway.payments.intake import has_payment, log_refused, paid_headers, purchase, take
from gateway.payments.remittance import Remittance
from gateway.pipeline.credentials import (
    GRANT_HEADER,
    NotYetValid,
    Opened,
    keep_for_peer,
    kept_for_peer,
    opened,
    paid_upstream_header,
    too_early,
)
from gateway.policy import Match
from gateway.policy.schema import Route
from gateway.pricing import quote
from gateway.pricing.tabs import TAB, Metering, PerRequest, most_msat, sats, tab_scope
from gateway.proxy.forward import Proxy
from gateway.services import Services
from gateway.store import StoreUnavailable
from gateway.store.leases import Exhausted, Hold, TabHolds
from gateway.tokens import Grant

log = logging.getLogger("farebox")


class Passage(Protocol):
    """What metering needs of the pipeline that calls it."""

    services: Services
    proxy: Proxy

    def origin(self, request: web.BaseRequest) -> str: ...

    def reply(self, paid: Accepted | None) -> CIMultiDict[str]: ...

    def payment(self, request: web.BaseRequest, cashier: Cashier) -> Remittance: ...

    async def unpaid(
        self, request: web.BaseRequest, match: Match, challenge: object
    ) -> web.StreamResponse: ...


async def serve(gw: Passage, request: web.BaseRequest, match: Match) -> web.StreamResponse:
    """Serve one metered request from its tab, or answer the tab challenge."""
    services = gw.services
    store = services.store
    assert match.route.route.meter is not None and store is not None

    async def refuse(
        request: web.BaseRequest,
        match: Match,
        refused: PaymentError | None = None,
        balance: int | None = None,
    ) -> web.Response:
        return await tab_challenge(services, request, match, gw.origin(request), refused, balance)

    wanted = Wanted.of(match, request.method)
    early: NotYetValid | None = None
    kept = await kept_for_peer(store, match.service.name, tab_scope(match))
    try:
        tried = await opened(
            services.tokens, request, wanted, services.revocations, kept, keeper=store
        )
    except NotYetValid as refused:  # a tab token minted by a clock running ahead
        tried, early = Opened(None, []), refused
    found = tried.admitted
    grant: Grant | None = found.grant if found is not None else None
    upstream = found.upstream_header if found is not None else ""
    if grant is None and tried.refused and not has_payment(request.headers):
        return await refuse(request, match, tried.refused[0][1])
    # A payment beside tabs that no longer open: a new tab, never those.
    paid = None
    if has_payment(request.headers):
        cashier = services.cashier
        if cashier is None:
            return payments_disabled()
        minimum = await quote.top_up(services.rates, match)
        try:
            payment = gw.payment(request, cashier)
            bought = purchase(
                match, request.method, minimum.satoshis, tab=grant.tab if grant else None
            )
            paid = await take(cashier, services.revocations, payment, bought)
        except PaymentError as refused:
            log_refused(match, minimum.satoshis, refused)
            if refused.status != 402:
                raise
            return await refuse(request, match, refused)
        await keep_for_peer(store, paid)
        grant, upstream = paid.grant, paid_upstream_header(cashier.tokens, paid)
    unit, _, _ = await quote.unit_price(
        services.policy.current, services.rates, request.headers, match
    )
    if grant is None:
        if unit == 0:  # a full concession: served free
            return await gw.proxy.forward(request, match)
        ask = refuse if early is None else too_early(refuse, early)
        return await gw.unpaid(request, match, ask)
    reply = gw.reply(paid)
    if paid is not None:
        reply.update(paid_headers(payment, paid))
    return await draw(gw, request, match, grant, {GRANT_HEADER: upstream}, unit, reply)


async def draw(
    gw: Passage,
    request: web.BaseRequest,
    match: Match,
    grant: Grant,
    extra: dict[str, str],
    unit: int,
    reply: CIMultiDict[str],
) -> web.StreamResponse | Ready:
    """Hold the most the request may cost on the grant's tab, proxy it, and
    settle what it cost; the tab challenge when the tab holds too little.

    `unit` is the price of one unit in msat, `extra` the headers for the
    upstream, `reply` those for the client (the tab's id is added).
    """
    services = gw.services
    meter = match.route.route.meter
    tab = grant.tab
    assert meter is not None and tab is not None
    reply[TAB] = tab
    held = most_msat(meter, unit)
    tabs = services.tabs
    assert tabs is not None
    try:
        hold = tabs.take(tab, held) or await tabs.hold(tab, held)
    except Exhausted as short:
        return await _exhausted(gw, request, match, held, short.balance, reply)
    metering = Metering(meter, unit, held, hold.balance, bodiless=request.method == "HEAD")
    try:
        return await gw.proxy.forward(request, match, extra, reply, metering)
    finally:
        charge = metering.charge()
        if not _settled_now(services, match, tabs, hold, held, charge):
            await _settle(tabs, hold, charge)


# A metered route's unit price (msat), hold, and for a per-request meter its
# charge in satoshis, when the price is known without asking
# (quote.unit_price_now): worked out once per route, not per request. Keyed
# by the route's id, the route kept to tell a reloaded policy's from it.
_known: dict[int, tuple[Route, int, int, int, str]] = {}
_KNOWN_KEPT = 1024


async def express(
    gw: Passage,
    request: LaneRequest,
    match: Match,
    grant: Grant,
    extra: dict[str, str],
    rid: str,
) -> web.StreamResponse | Ready:
    """`draw` for the gateway's express path (a tab token, nothing bought,
    no CORS): the same hold, answer and settlement, in one coroutine. The
    unit price, hold and per-request charge are worked out once per route
    when the price is in satoshis without concessions (else quoted per
    request). It awaits the upstream; the store only where the tab's lease
    does not cover the hold or settle in memory (always on the memory
    store); and the client only when it reads slower
    (`Proxy.express_metered`). `rid` is the request's id.
    """
    services = gw.services
    route = match.route.route
    meter = route.meter
    tab = grant.tab
    tabs = services.tabs
    assert meter is not None and tab is not None and tabs is not None
    known = _known.get(id(route))
    if known is not None and known[0] is route:
        _, unit, held, good, owes = known
    else:
        now = quote.unit_price_now(match)
        if now is None:  # a fiat price or concessions: asked per request
            unit, _, _ = await quote.unit_price(
                services.policy.current, services.rates, request.headers, match
            )
        else:
            unit = now[0]
        held = most_msat(meter, unit)
        good, owes = PerRequest.worked_out(unit, held)
        if now is not None:
            if len(_known) >= _KNOWN_KEPT:
                _known.clear()
            _known[id(route)] = (route, unit, held, good, owes)
    try:
        hold = tabs.take(tab, held) or await tabs.hold(tab, held)
    except Exhausted as short:
        return await _exhausted(gw, request, match, held, short.balance, CIMultiDict({TAB: tab}))
    bodiless = request.method == "HEAD"
    metering = (
        PerRequest(meter, unit, held, hold.balance, bodiless=bodiless, good=good, owes=owes)
        if meter.per == "request"
        else Metering(meter, unit, held, hold.balance, bodiless=bodiless)
    )
    try:
        return await gw.proxy.express_metered(request, match, extra, tab, metering, rid=rid)
    finally:
        charge = metering.charge()
        if not _settled_now(services, match, tabs, hold, held, charge):
            await _settle(tabs, hold, charge)


async def _exhausted(
    gw: Passage,
    request: web.BaseRequest,
    match: Match,
    held: int,
    balance: int,
    reply: CIMultiDict[str],
) -> web.Response:
    """The tab challenge for a tab holding `balance` msat, short of `held`."""
    refusal = PaymentError(
        "tab-exhausted",
        f"the tab holds {sats(balance)} satoshis and this request may cost up to "
        f"{sats(held)}: top it up",
    )
    response = await tab_challenge(
        gw.services, request, match, gw.origin(request), refusal, balance
    )
    response.headers.extend(reply)
    return response


def _settled_now(
    services: Services, match: Match, tabs: TabHolds, hold: Hold, held: int, charge: int
) -> bool:
    """Count a metered request's `charge` (msat) and settle its `hold` in memory
    if the tab's lease allows; False when `_settle` must ask the store."""
    _count(services, match, held, charge)
    try:
        return tabs.settled(hold, charge)
    except StoreUnavailable:
        _unsettled(hold)
        return True


async def _settle(tabs: TabHolds, hold: Hold, charge: int) -> None:
    """Settle `hold` at `charge` msat through the store; an outage is logged."""
    try:
        await tabs.settle(hold, charge)
    except StoreUnavailable:
        _unsettled(hold)


def _unsettled(hold: Hold) -> None:
    # The hold returns to the tab when it expires: unbilled, not lost.
    log.error("could not settle a metered request on tab %s: store unavailable", hold.tab)


def _count(services: Services, match: Match, held: int, charge: int) -> None:
    """Count a metered request's charge in the metrics and the tallies."""
    metrics.metered(match.service.name, charge)
    if services.tally is not None:
        services.tally.add(
            match.service.name,
            match.route.scope,
            metered_msat=charge,
            refunds=int(charge == 0 and held > 0),
        )
