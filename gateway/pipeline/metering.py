"""A metered route: drawn from a prepaid tab, held, proxied, settled.

Hold the most the request may cost (`meter.most` units at the unit price),
proxy it, then settle what it really cost — one unit, the units the
upstream reports, or the bytes delivered — and return the rest of the
hold (pricing/tabs.py `Metering` counts). A payment on the request opens
or tops up the tab through the one intake first.
"""

from __future__ import annotations

import logging
from typing import Protocol

from aiohttp import web
from multidict import CIMultiDict

from gateway.challenge.respond import tab_challenge
from gateway.edge import metrics
from gateway.edge.lane import Ready
from gateway.edge.problems import payments_disabled
from gateway.errors import PaymentError
from gateway.payments.admission import Wanted, admit
from gateway.payments.cashier import Accepted, Cashier
from gateway.payments.intake import has_payment, log_refused, paid_headers, purchase, take
from gateway.payments.remittance import Remittance
from gateway.pipeline.credentials import (
    GRANT_HEADER,
    NotYetValid,
    by_token,
    forget_for_peer,
    keep_for_peer,
    kept_for_peer,
    too_early,
)
from gateway.policy import Match
from gateway.pricing import quote
from gateway.pricing.tabs import TAB, Metering, most_msat, sats, tab_scope
from gateway.proxy.forward import Proxy
from gateway.services import Services
from gateway.store import StoreUnavailable
from gateway.store.leases import Exhausted
from gateway.tokens import Grant

log = logging.getLogger("farebox")


class Proxied(Protocol):
    """Proxies a metered request: `Proxy.forward`'s shape."""

    async def __call__(
        self,
        request: web.BaseRequest,
        match: Match,
        extra: dict[str, str],
        reply: CIMultiDict[str],
        meter: Metering,
        /,
    ) -> web.StreamResponse | Ready: ...


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
        found = by_token(services.tokens, request, wanted, kept)
    except NotYetValid as refused:  # a tab token minted by a clock running ahead
        found, early = None, refused
    grant: Grant | None = found.grant if found is not None else None
    upstream = found.upstream_header if found is not None else ""
    if grant is not None:
        assert found is not None
        try:
            await admit(grant, wanted, services.revocations)
        except PaymentError as refused:
            await forget_for_peer(store, found)
            if not has_payment(request.headers):
                return await refuse(request, match, refused)
            # A payment beside a tab that no longer opens: a new tab, never that one.
            grant, upstream = None, ""
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
        grant, upstream = paid.grant, cashier.tokens.upstream_header(paid.grant)
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
    proxy: Proxied | None = None,
) -> web.StreamResponse | Ready:
    """Hold the most the request may cost on the grant's tab, proxy it, and
    settle what it cost; the tab challenge when the tab holds too little.

    `unit` is the price of one unit in msat, `extra` the headers for the
    upstream, `reply` those for the client (the tab's id is added).
    `proxy` proxies it (`Proxy.forward` unless given: the express path's).
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
        refusal = PaymentError(
            "tab-exhausted",
            f"the tab holds {sats(short.balance)} satoshis and this request may cost up to "
            f"{sats(held)}: top it up",
        )
        response = await tab_challenge(
            services, request, match, gw.origin(request), refusal, short.balance
        )
        response.headers.extend(reply)
        return response
    metering = Metering(meter, unit, held, hold.balance, bodiless=request.method == "HEAD")
    try:
        return await (proxy or gw.proxy.forward)(request, match, extra, reply, metering)
    finally:
        charge = metering.charge()
        metrics.metered(match.service.name, charge)
        if services.tally is not None:
            services.tally.add(
                match.service.name,
                match.route.scope,
                metered_msat=charge,
                refunds=int(charge == 0 and held > 0),
            )
        try:
            if not tabs.settled(hold, charge):
                await tabs.settle(hold, charge)
        except StoreUnavailable:
            # The hold returns to the tab when it expires: unbilled, not lost.
            log.error("could not settle a metered request on tab %s: store unavailable", tab)
