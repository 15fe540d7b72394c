"""The 402 answer to an unpaid request for a priced resource.

Two audiences read it: BRC-121 wallets look only at the `x-bsv-sats` and
`x-bsv-server` headers; Farebox-aware clients read the problem+json body,
which spells out the whole payment request. Neither ever contains the
protected content: the upstream is not asked until a payment is verified.
"""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

from gateway.edge.problems import CONTENT_TYPE, problem_body
from gateway.edge.urls import PAY
from gateway.errors import PaymentError
from gateway.policy import Match
from gateway.pricing.rates import Quote
from gateway.pricing.tabs import tab_scope

# BRC-121 headers must be readable by browser scripts on other origins.
EXPOSE = "x-bsv-sats, x-bsv-server"


def payment_request(
    match: Match, method: str, server_key: str, quote: Quote, tab: dict | None = None
) -> dict:
    route = match.route.route
    if tab is None:
        grant = route.effective_grant
        bought = {
            "lasts_seconds": grant.lasts,
            "covers": grant.covers,
            "scope": match.scope,
            "methods": list(route.methods),
        }
    else:
        tabs = match.service.service.tabs
        assert tabs is not None
        bought = {
            "lasts_seconds": tabs.lasts,
            "covers": "tab",
            "scope": tab_scope(match),
            "methods": ["*"],
        }
    request = {
        "price": _price(quote),
        "service": match.service.name,
        "resource": {"method": method, "path": match.resource},
        "description": route.description or match.service.service.description,
        "grant": bought,
        "accepts": [
            {
                "scheme": "brc-121",
                "description": "retry this request with x-bsv-beef, x-bsv-sender, "
                "x-bsv-nonce, x-bsv-time and x-bsv-vout headers",
            },
            {
                "scheme": "farebox",
                "description": "POST the payment as JSON to pay_url",
                "pay_url": PAY,
            },
        ],
        "pay_url": PAY,
        "server": server_key,
    }
    if tab is not None:
        request["tab"] = tab
    return request


def _price(quote: Quote) -> dict:
    price: dict = {"satoshis": quote.satoshis}
    if quote.concession is not None:
        price["full_satoshis"] = quote.full_satoshis
        price["concession"] = {
            "name": quote.concession.name,
            "discount_percent": quote.concession.discount,
        }
    if quote.rate is not None:
        price["fiat"] = {
            "currency": quote.rate.currency,
            "cents": float(quote.cents or 0),
            "rate_per_bsv": float(quote.rate.per_bsv),
            "rate_as_of": int(quote.rate.as_of),
            "rounding": "satoshis rounded up",
        }
    return price


def payment_required(
    match: Match,
    method: str,
    server_key: str,
    quote: Quote,
    refused: PaymentError | None = None,
    concessions: tuple[Any, ...] = (),
    tab: dict | None = None,
) -> web.Response:
    """402 with the payment request; `refused` says why a payment just failed.

    For a metered route `tab` describes the metering, and the price is the
    smallest top-up of a tab (any larger payment is credited in full).
    """
    request = payment_request(match, method, server_key, quote, tab)
    if concessions:
        request["concessions"] = [
            {
                "name": c.name,
                "discount_percent": c.discount,
                "description": c.description,
                "credential_header": "X-Farebox-Eligibility",
            }
            for c in concessions
        ]
    sats = request["price"]["satoshis"]
    if refused is None:
        reason, title = "payment-required", "Payment required"
        detail = f"{method} {match.resource} costs {sats} satoshis"
        if tab is not None:
            detail = (
                f"{method} {match.resource} is paid from a prepaid tab: "
                f"top one up with at least {sats} satoshis"
            )
    else:
        reason, title, detail = refused.reason, "Payment refused", refused.detail
    body = problem_body(402, reason, title, detail, payment=request)
    if refused is not None:
        body.update((k, v) for k, v in refused.extra.items() if k not in body)
    return web.Response(
        status=402,
        body=json.dumps(body, ensure_ascii=False).encode(),
        content_type=CONTENT_TYPE,
        headers={
            "x-bsv-sats": str(sats),
            "x-bsv-server": server_key,
            "Access-Control-Allow-Origin": "*",
            "Access-Control-Expose-Headers": EXPOSE,
            "Cache-Control": "no-store",
        },
    )
