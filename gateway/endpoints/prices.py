"""The public price list, `/.well-known/farebox/prices`: a public body's fee
schedule, generated from the policy.

Each service with its routes: what is free, what costs how much (fiat
prices in their currency, with the satoshis they come to at the current
rate when there is one), what a payment buys (how long, which resources, or
a prepaid tab), free quotas, concessions and participation rewards. JSON for
programs, a page for browsers (linked from every paywall page). Nothing here
is secret: every 402 already tells the same.
"""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

from gateway.challenge import paywall
from gateway.policy import Policy
from gateway.policy.schema import Price, Quota
from gateway.pricing.rates import Rates, RateUnavailable, quote
from gateway.services import Services


async def price_list(policy: Policy, rates: Rates | None) -> dict[str, Any]:
    """{"services": [{name, title, routes: [...]}], "concessions": [...]} for `policy`.

    A route: path (mount included), methods, description, price ({"free":
    true}, or satoshis, or currency + cents + satoshis now, null without a
    rate), buys (covers, lasts_seconds), tab (per, top_up) for a metered
    route, free_quota (requests, per_seconds, counted_by), concessions
    (names), reward (pays, campaign, description, requires: the concessions
    whose credentials may take part). Raises nothing: a rate it cannot get
    leaves `satoshis` null.
    """
    services = []
    for compiled in policy.services:
        service = compiled.service
        routes = []
        for route in compiled.routes:
            rule = route.route
            entry: dict[str, Any] = {
                "path": route.scope,
                "methods": list(rule.methods),
                "description": rule.description,
                "price": await _price(rule.price, rates),
            }
            if rule.meter is not None and service.tabs is not None:
                entry["tab"] = {
                    "per": rule.meter.per,
                    "top_up": await _price(service.tabs.top_up, rates),
                    "lasts_seconds": service.tabs.lasts,
                }
            elif not rule.price.free:
                grant = rule.effective_grant
                entry["buys"] = {"covers": grant.covers, "lasts_seconds": grant.lasts}
            if rule.free_quota is not None:
                entry["free_quota"] = _quota(rule.free_quota)
            if rule.concessions:
                entry["concessions"] = list(rule.concessions)
            if rule.reward is not None:
                entry["reward"] = {
                    "pays": await _price(rule.reward.pays, rates),
                    "campaign": rule.reward.campaign,
                    "description": rule.reward.description,
                    "requires": list(rule.reward.requires),
                }
            routes.append(entry)
        services.append(
            {"name": compiled.name, "title": service.description or compiled.name, "routes": routes}
        )
    concessions = [
        {
            "name": c.name,
            "discount_percent": c.discount,
            "description": c.description,
            **({"free_quota": _quota(c.free_quota)} if c.free_quota is not None else {}),
        }
        for c in policy.concessions.values()
    ]
    return {"services": services, "concessions": concessions}


async def _price(price: Price, rates: Rates | None) -> dict[str, Any]:
    if price.free:
        return {"free": True}
    if price.currency is None:
        return {"satoshis": price.satoshis}
    try:
        satoshis: int | None = (await quote(price, rates)).satoshis
    except RateUnavailable:
        satoshis = None  # no rate now: the 402 says it when there is one
    return {"currency": price.currency, "cents": str(price.cents), "satoshis": satoshis}


def _quota(quota: Quota) -> dict[str, Any]:
    counted = "key" if quota.by == "key" else "network"
    return {"requests": quota.requests, "per_seconds": quota.per, "counted_by": counted}


async def prices(services: Services, request: web.BaseRequest, _: str) -> web.Response:
    """The price list: a page for browsers, JSON for programs (`?format=json` too)."""
    figures = await price_list(services.policy.current, services.rates)
    headers = {
        "Cache-Control": "public, max-age=60",
        "Access-Control-Allow-Origin": "*",
        "Vary": "Accept, Accept-Language",  # a page in the reader's language, or JSON
    }
    if request.query.get("format") != "json" and paywall.wants_html(request.headers.get("Accept")):
        page = paywall.render_prices(figures, request.headers.get("Accept-Language"))
        return web.Response(text=page, content_type="text/html", headers=headers)
    return web.Response(
        body=json.dumps(figures).encode(), content_type="application/json", headers=headers
    )
