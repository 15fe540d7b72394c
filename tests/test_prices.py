"""The public price list (issue 17, point 5): /.well-known/farebox/prices, a
fee schedule generated from the policy, JSON for programs and a page for
people, linked from every paywall page."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

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


CONCESSIONS = """\
concessions:
  students:
    description: Students with a university card
    discount: 25
    issuer_key: |
      {key}
  seniors:
    discount: 10
    free_quota: {{requests: 2, per: 1d}}
    issuer_key: |
      {key}
  voters:
    issuer_key: |
      {key}
services:
  archive:
    upstream: {upstream}
    mount: /archive
    description: County records archive
    routes:
      - path: /pages/{{n}}
        price: 1250
        description: One transcribed page
        concessions: [students, seniors]
      - path: /search
        price: free
  poll:
    upstream: {upstream}
    mount: /poll
    description: Neighbourhood poll
    routes:
      - path: /**
        methods: [POST]
        price: free
        reward:
          pays: 100
          campaign: poll-2027
          description: the 2027 neighbourhood poll
          requires: [voters]
          budget: {{total: 10000}}
"""
KEY = "-----BEGIN PUBLIC KEY-----\n      MCowBQYDK2VwAyEAV7zd4Le5yDI7HTTYDs+HWmFhCCkfcuc+5EQqdlHr9CA=\n      -----END PUBLIC KEY-----"


async def page_of(base: str, language: str = "en") -> str:
    async with (
        aiohttp.ClientSession() as http,
        http.get(base + URL, headers={**BROWSER, "Accept-Language": language}) as r,
    ):
        assert r.status == 200 and r.content_type == "text/html"
        return await r.text()


async def test_the_page_names_routes_and_concessions_in_words(
    gateway: GatewayFactory, upstream
) -> None:
    base = await gateway(CONCESSIONS.format(upstream=upstream.url, key=KEY))
    page = await page_of(base)
    # A route with no description: plain words, never its pattern or method.
    assert "<td>Other pages of this service</td>" in page
    assert "<td>Pages of this service</td>" in page  # a service none of whose routes says
    assert "/search" not in page and "/**" not in page and "POST" not in page
    # Concessions lead with their description (the id only without one) and say what
    # they give; one that only decides who may be rewarded says that, not "0 % off".
    assert "Students with a university card: 25% off." in page
    assert "students" not in page
    assert "seniors: 10% off." in page and "seniors: 2 free requests every day." in page
    assert "voters: can be paid for taking part." in page
    assert ": 0% off" not in page and "voters: 0" not in page
    # A reward is named by its description, not its campaign id.
    assert "Taking part pays 100 satoshis (the 2027 neighbourhood poll)" in page
    spanish = await page_of(base, "es")
    assert "<h2>Descuentos y otras ventajas</h2>" in spanish
    assert "<td>Otras páginas de este servicio</td>" in spanish
    assert "Students with a university card: 25 % de descuento." in spanish
    assert "seniors: 2 consultas gratis cada día." in spanish
    assert "voters: da derecho a cobrar una recompensa por participar." in spanish
    # Programs still get the pattern, and who may take part in a reward.
    async with aiohttp.ClientSession() as http, http.get(base + URL) as r:
        figures = await r.json()
    [poll] = figures["services"][1]["routes"]
    assert poll["path"] == "/poll/**" and poll["reward"]["requires"] == ["voters"]


async def test_the_consultation_policy_reads_in_words(gateway: GatewayFactory) -> None:
    policy = (Path(__file__).parent.parent / "policies" / "consultation.yaml").read_text()
    page = await page_of(await gateway(policy))
    assert "/register" not in page and "Pages of this service" not in page
    assert "Get a residents&#39; credential (registered residents only)" in page
    assert "Registered residents of Hollowmere: can be paid for taking part." in page
    assert ": 0% off" not in page and "residents:" not in page


async def test_a_letter_currency_code_stands_apart_from_the_digits(
    gateway: GatewayFactory, upstream
) -> None:
    # CLDR writes euros for es-MX as "EUR1.20"; the page puts a no-break space between.
    base = await gateway(
        POLICY.format(upstream=upstream.url), rates=FixedRates({"EUR": Decimal("800000")})
    )
    page = await page_of(base, "es-MX")
    assert "EUR\u00a01.20 (unos 150 satoshis ahora)" in page
    assert "EUR\u00a08.00" in page and "EUR1" not in page and "EUR8" not in page
