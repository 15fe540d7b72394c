"""The public price list (issue 17, point 5): /.well-known/farebox/prices, a
fee schedule generated from the policy, JSON for programs and a page for
people, linked from every paywall page."""

from __future__ import annotations

from decimal import Decimal

import aiohttp

from gateway.pricing.rates import FixedRates
from tests.conftest import GatewayFactory

POLICY = """\
services:
  archive:
    upstream: {upstream}
    mount: /archive
    description: County records archive
    routes:
      - path: /search
        price: free
        free_quota: {{requests: 3, per: 1d}}
      - path: /pages/{{n}}
        price: 1250000
        description: One transcribed page
        grant: {{lasts: 1d}}
  transit:
    upstream: {upstream}
    mount: /transit
    tabs: {{top_up: {{eur_cents: 800}}}}
    routes:
      - path: /board
        methods: [POST]
        price: {{eur_cents: 120}}
        meter: {{per: request}}
        description: Board a bus
"""
URL = "/.well-known/farebox/prices"
BROWSER = {"Accept": "text/html,*/*;q=0.8"}


async def test_the_price_list_says_what_the_policy_sells(gateway: GatewayFactory, upstream) -> None:
    base = await gateway(
        POLICY.format(upstream=upstream.url), rates=FixedRates({"EUR": Decimal("800000")})
    )
    async with aiohttp.ClientSession() as http:
        async with http.get(base + URL) as r:
            assert r.status == 200 and r.content_type == "application/json"
            figures = await r.json()
        async with http.get(base + URL, headers=BROWSER) as r:
            assert r.status == 200 and r.content_type == "text/html"
            page = await r.text()
        async with http.get(base + "/archive/pages/1", headers=BROWSER) as r:
            paywall = await r.text()
    archive, transit = figures["services"]
    assert archive["title"] == "County records archive"
    search, pages = archive["routes"]
    assert search["price"] == {"free": True}
    assert search["free_quota"] == {"requests": 3, "per_seconds": 86400, "counted_by": "network"}
    assert pages["price"] == {"satoshis": 1250000}
    assert pages["buys"] == {"covers": "resource", "lasts_seconds": 86400}
    [board] = transit["routes"]
    assert board["price"] == {"currency": "EUR", "cents": "120", "satoshis": 150}
    assert board["tab"]["per"] == "request" and board["tab"]["top_up"]["satoshis"] == 1000
    # The page, in words: fiat first with the satoshis beside, thousands separated.
    assert "County records archive" in page and "One transcribed page" in page
    assert "1,250,000 satoshis" in page and "that item, for 1 day" in page
    assert (
        "€1.20 (about 150 satoshis now) for each use, from a prepaid balance; "
        "top-ups from €8.00 (about 1,000 satoshis now)" in page
    )
    assert "3 free every day per network" in page
    assert f'href="{URL}"' in paywall  # every paywall page links the list


async def test_without_a_rate_a_fiat_price_is_listed_in_its_currency(
    gateway: GatewayFactory, upstream
) -> None:
    base = await gateway(POLICY.format(upstream=upstream.url))  # no rate source at all
    async with aiohttp.ClientSession() as http:
        async with http.get(base + URL) as r:
            figures = await r.json()
        async with http.get(base + URL, headers=BROWSER) as r:
            page = await r.text()
    [board] = figures["services"][1]["routes"]
    assert board["price"] == {"currency": "EUR", "cents": "120", "satoshis": None}
    assert "€1.20 for each use" in page
