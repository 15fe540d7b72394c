"""The 402 a priced request gets: for a purchase or a tab, as JSON or a page.

`challenge` answers a route sold per grant, `tab_challenge` a metered route
(open or top up a tab). Both carry the BRC-121 headers and the problem+json
payment request (answer.py); a browser gets the same as a paywall page with
a checkout a phone wallet can pay (paywall/, payments/checkout.py).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Mapping
from dataclasses import replace
from decimal import Decimal
from typing import Any

from aiohttp import web
from bsv import PublicKey
from multidict import CIMultiDict

from gateway.challenge.answer import payment_required
from gateway.challenge.paywall import Money, Page, is_phone, render, wants_html
from gateway.challenge.protocols import offer
from gateway.edge import urls
from gateway.errors import PaymentError
from gateway.payments.checkout import LIFETIME, keep_ticket, open_checkout, payee, payment_uri
from gateway.peer import PEER
from gateway.policy import Match
from gateway.pricing import quote
from gateway.pricing.rates import Quote
from gateway.pricing.tabs import most_msat, sats
from gateway.services import Services
from gateway.store import StoreUnavailable

KEPT_MOST = 1024  # characters of a ticket kept under a short id, at most


async def challenge(
    services: Services,
    request: web.BaseRequest,
    match: Match,
    origin: str,
    refused: PaymentError | None = None,
    quoted: Quote | None = None,
) -> web.Response:
    """402 for a route sold per grant; `refused` says why a payment was not taken."""
    policy = services.policy.current
    quoted = quoted or await quote.price(policy, services.rates, request.headers, match)
    html = wants_html(request.headers.get("Accept"))
    key = None
    if refused is None and not html and quoted.concession is None and PEER.get() is None:
        price = (quoted.satoshis, quoted.rate, quoted.cents)
        key = kept_key(services, match, request.method, origin, request.raw_path, price)
        kept = _RENDERED.get(policy, key)
        if kept is not None:
            return web.Response(status=402, body=kept.body, headers=CIMultiDict(kept.headers))
    offered = quote.offered(policy, match)
    answer = payment_required(match, request.method, services.server_key, quoted, refused, offered)
    if html:
        answer = await _paywall(services, request, match, origin, quoted, refused, answer)
    offer(services, request, match, origin, quoted.satoshis, answer, refused)
    if key is not None:
        _RENDERED.keep(policy, key, answer)
    return answer


def kept_key(
    services: Services,
    match: Match,
    method: str,
    origin: str,
    raw_path: str,
    price: tuple[int, Any, Any],
) -> tuple[Any, ...]:
    """What a kept JSON 402 depends on, besides the policy (see `_Rendered`);
    `price` is the quote's (satoshis, rate, cents)."""
    return (services.server_key, services.x402_network,
            match.service.name, match.route.scope, match.resource, method,
            origin, raw_path, price)  # fmt: skip


def kept_402(policy: object, key: tuple[Any, ...]) -> Kept | None:
    """The JSON 402 `challenge` rendered for `key` in the last second, if any."""
    return _RENDERED.get(policy, key)


class Kept:
    """A rendered JSON 402: its headers (as challenge() made them) and body,
    and the headers once more as HTTP/1.1 lines for the lane."""

    __slots__ = ("body", "born", "headers", "lines")

    def __init__(self, born: float, body: bytes, headers: tuple[tuple[str, str], ...]) -> None:
        self.born = born
        self.body = body
        self.headers = headers
        self.lines = "".join([f"{name}: {value}\r\n" for name, value in headers]).encode()


class _Rendered:
    """JSON 402s rendered in the last second, per worker, as bytes.

    The JSON 402 of an unpaid request (no refusal, no BRC-104 peer, no
    concession, not a paywall page, which opens a checkout of its own) is a
    pure function of the policy, the quote (satoshis, rate), the route, the
    resource, the method and the URL the client used. A priced URL asked for
    again and again without paying (a link shared widely, a crawler, a
    flood) costs the pipeline's decision each time, not the rendering:
    JSON, x402's base64 JSON, headers. The server key and x402 network are
    in the key too (gateways in one process may be paid to different keys).
    Kept for `SECONDS` at most (a fiat price follows its rate), `SIZE`
    answers at most, all dropped when the policy changes.
    """

    SECONDS = 1.0
    SIZE = 1024

    def __init__(self) -> None:
        self.policy: object = None
        self.answers: dict[tuple[Any, ...], Kept] = {}

    def get(self, policy: object, key: tuple[Any, ...]) -> Kept | None:
        if policy is not self.policy:
            return None
        found = self.answers.get(key)
        if found is None:
            return None
        if time.monotonic() - found.born > self.SECONDS:
            del self.answers[key]
            return None
        return found

    def keep(self, policy: object, key: tuple[Any, ...], answer: web.Response) -> None:
        if policy is not self.policy:
            self.policy, self.answers = policy, {}
        elif len(self.answers) >= self.SIZE:
            self.answers.clear()  # many distinct URLs: start over rather than keep them all
        if isinstance(answer.body, bytes):
            headers = tuple(answer.headers.items())
            if all("\r" not in n + v and "\n" not in n + v for n, v in headers):
                self.answers[key] = Kept(time.monotonic(), answer.body, headers)


_RENDERED = _Rendered()


async def tab_challenge(
    services: Services,
    request: web.BaseRequest,
    match: Match,
    origin: str,
    refused: PaymentError | None = None,
    balance: int | None = None,
) -> web.Response:
    """402 for a metered route: open or top up a tab (`balance` in msat when known)."""
    meter = match.route.route.meter
    assert meter is not None
    policy = services.policy.current
    top_up = await quote.top_up(services.rates, match)
    unit, full, proven = await quote.unit_price(policy, services.rates, request.headers, match)
    unit_price: dict[str, Any] = {"satoshis": sats(unit)}
    if proven is not None:
        unit_price["full_satoshis"] = sats(full)
        unit_price["concession"] = {"name": proven.name, "discount_percent": proven.discount}
    tab: dict[str, Any] = {
        "per": meter.per,
        "unit_price": unit_price,
        "most_units": str(meter.most),
        "most_satoshis": sats(most_msat(meter, unit)),
        "top_up_satoshis": top_up.satoshis,
        "balance_url": urls.TAB,
    }
    if meter.per == "unit":
        tab["units_header"] = meter.units_header
    if balance is not None:
        tab["balance_satoshis"] = sats(balance)
    offered = quote.offered(policy, match)
    answer = payment_required(
        match, request.method, services.server_key, top_up, refused, offered, tab
    )
    if wants_html(request.headers.get("Accept")):
        answer = await _paywall(services, request, match, origin, top_up, refused, answer)
    offer(services, request, match, origin, top_up.satoshis, answer, refused)
    return answer


async def _paywall(
    services: Services,
    request: web.BaseRequest,
    match: Match,
    origin: str,
    quoted: Quote,
    refused: PaymentError | None,
    answer: web.Response,
) -> web.Response:
    """The 402 as a page for a person, with the same BRC-121 headers."""
    route, service = match.route.route, match.service
    language = request.headers.get("Accept-Language")
    policy = services.policy.current
    unit: Money | None = None
    per = "request"
    if route.meter is not None:
        assert service.service.tabs is not None
        covers, lasts = "tab", service.service.tabs.lasts
        # What one use costs (the concession a credential proves applied); the
        # payment the page asks for is the top-up, shown apart.
        msat, _, proven = await quote.unit_price(policy, services.rates, request.headers, match)
        exact = Decimal(msat) / 1000
        unit = Money(int(exact) if exact == int(exact) else exact)
        if route.price.currency is not None and route.price.cents is not None:
            unit = Money(unit.satoshis, _less(route.price.cents, proven), route.price.currency)
        per = route.meter.per
    else:
        grant = route.effective_grant
        covers, lasts = grant.covers, grant.lasts
    title = service.service.description or service.name
    page = Page(
        service_title=title,
        what=route.description,
        covers=covers,
        lasts=lasts,
        method=request.method,
        resource=match.resource,
        satoshis=quoted.satoshis,
        price=Money(
            quoted.satoshis,
            _less(quoted.cents, quoted.concession),
            quoted.rate.currency if quoted.rate else None,
        ),
        server=services.server_key,
        pay_url=urls.PAY,
        wallet_url=services.wallet_url,
        unit=unit,
        per=per,
        rate=(quoted.rate.per_bsv, quoted.rate.currency) if quoted.rate is not None else None,
        concession=_concession(quoted),
        offered=", ".join(c.name for c in quote.offered(policy, match)),
        refused=refused.detail if refused is not None else "",
        phone=is_phone(request.headers),
    )
    if services.cashier is not None and services.tokens is not None:
        checkout, ticket = open_checkout(
            services.tokens, service.name, match.resource, request.method, quoted.satoshis
        )
        # The QR code carries a short id whose ticket the store keeps; with the
        # store unreachable, the ticket itself (a denser code, but it works).
        # Nothing is kept for a HEAD (no one sees its page) or for a ticket as
        # long as its path is (an unauthenticated request must not park
        # kilobytes in the store): their links carry the ticket.
        link = ticket
        if services.store is not None and request.method != "HEAD" and len(ticket) <= KEPT_MOST:
            with contextlib.suppress(StoreUnavailable):
                link = await keep_ticket(services.store, checkout, ticket)
        status_url = urls.CHECKOUT + link
        address = payee(PublicKey(services.server_key), checkout).address()
        page = replace(
            page,
            checkout_uri=payment_uri(address, quoted.satoshis, origin + status_url, title),
            status_url=status_url,
            expires=checkout.expires,
            minutes=LIFETIME // 60,
        )
    headers: Mapping[str, str] = {
        k: v for k, v in answer.headers.items() if k.lower() != "content-type"
    }
    return web.Response(
        status=402,
        text=render(page, language),
        content_type="text/html",
        # The page is in the reader's language and laid out for their device.
        headers={**headers, "Vary": "Accept, Accept-Language, Sec-CH-UA-Mobile, User-Agent"},
    )


def _less(cents: Decimal | None, concession: Any) -> Decimal | None:
    """A fiat amount with a concession's discount taken off (the satoshis are
    reduced by the quote; the page shows both, so they must agree)."""
    if cents is None or concession is None:
        return cents
    return cents * (100 - concession.discount) / 100


def _concession(quoted: Quote) -> dict[str, Any] | None:
    if quoted.concession is None:
        return None
    return {
        "name": quoted.concession.description or quoted.concession.name,
        "discount": quoted.concession.discount,
        "full": quoted.full_satoshis,
        # The full price in the money the price is shown in (a fiat route).
        "full_cents": quoted.cents,
        "currency": quoted.rate.currency if quoted.rate is not None else None,
    }
