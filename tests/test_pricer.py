"""Fiat prices: conversion, rounding, rate sources, and what the client sees."""

from __future__ import annotations

import time
from decimal import Decimal

import aiohttp
import pytest
from aiohttp import web

from gateway.policy.schema import Price
from gateway.pricing.rates import FeedRates, FixedRates, Rate, RateUnavailable, quote, satoshis_for


@pytest.mark.parametrize(
    ("cents", "per_bsv", "satoshis"),
    [
        ("1", "50", 20_000),  # 1 cent at $50/BSV: exactly 20,000 sats
        ("2.5", "40", 62_500),
        ("1", "30", 33_334),  # 33,333.33… rounds up, never down
        ("0.0001", "50", 2),  # 1.999… → 2
        ("0.0001", "100000000", 1),  # far below a satoshi: at least 1
    ],
)
def test_rounding_is_up_to_whole_satoshis(cents: str, per_bsv: str, satoshis: int) -> None:
    got = satoshis_for(Decimal(cents), Rate("USD", Decimal(per_bsv), 0))
    assert got == satoshis
    # Never less than the fiat price, never a whole satoshi more.
    value = Decimal(got) / 100_000_000 * Decimal(per_bsv) * 100
    assert value >= Decimal(cents)
    assert (Decimal(got) - 1) / 100_000_000 * Decimal(per_bsv) * 100 < Decimal(cents) or got == 1


async def test_fixed_rates_and_missing_currency() -> None:
    rates = FixedRates({"USD": Decimal("50")})
    q = await quote(Price(cents=Decimal("1"), currency="USD"), rates)
    assert (q.satoshis, q.rate.currency, q.cents) == (20_000, "USD", Decimal("1"))
    with pytest.raises(RateUnavailable):
        await quote(Price(cents=Decimal("1"), currency="EUR"), rates)
    with pytest.raises(RateUnavailable):
        await quote(Price(cents=Decimal("1"), currency="USD"), None)
    assert (await quote(Price(satoshis=7), None)).satoshis == 7


@pytest.fixture
async def feed():
    state = {"body": {"USD": 40, "EUR": "37.5"}, "status": 200, "hits": 0}

    async def rates(request: web.Request) -> web.Response:
        state["hits"] += 1
        return web.json_response(state["body"], status=state["status"])

    app = web.Application()
    app.router.add_get("/rates", rates)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    state["url"] = f"http://127.0.0.1:{runner.addresses[0][1]}/rates"
    yield state
    await runner.cleanup()


async def test_feed_is_cached_and_refused_when_stale(feed, monkeypatch) -> None:
    rates = FeedRates(feed["url"], max_age=10, refresh=5)
    try:
        assert (await rates.rate("USD")).per_bsv == Decimal("40")
        assert (await rates.rate("EUR")).per_bsv == Decimal("37.5")
        assert feed["hits"] == 1  # cached
        # The feed breaks; the last good rate serves until it is too old.
        feed["status"] = 500
        now = time.time()
        monkeypatch.setattr("gateway.pricing.rates.time.time", lambda: now + 6)
        assert (await rates.rate("USD")).per_bsv == Decimal("40")
        monkeypatch.setattr("gateway.pricing.rates.time.time", lambda: now + 11)
        with pytest.raises(RateUnavailable, match="no fresh rate"):
            await rates.rate("USD")
        # It recovers with the feed.
        feed["status"], feed["body"] = 200, {"USD": 44}
        monkeypatch.setattr("gateway.pricing.rates.time.time", lambda: now + 20)
        assert (await rates.rate("USD")).per_bsv == Decimal("44")
    finally:
        await rates.close()


async def test_feed_ignores_garbage(feed) -> None:
    feed["body"] = {"USD": "lots", "EUR": -3, "XYZ": 5}
    rates = FeedRates(feed["url"], max_age=10)
    try:
        with pytest.raises(RateUnavailable):
            await rates.rate("USD")
        assert (await rates.rate("XYZ")).per_bsv == Decimal("5")
    finally:
        await rates.close()


POLICY = """\
services:
  transit:
    upstream: {upstream}
    routes:
      - path: /ride
        methods: [POST]
        price: {{usd_cents: 2}}
        description: One bus ride
"""


async def test_challenge_shows_satoshis_and_fiat(gateway, upstream) -> None:
    base = await gateway(
        POLICY.format(upstream=upstream.url), rates=FixedRates({"USD": Decimal("40")})
    )
    async with aiohttp.ClientSession() as http, http.post(f"{base}/ride") as r:
        body = await r.json(content_type=None)
        assert r.status == 402 and r.headers["x-bsv-sats"] == "50000"
    price = body["payment"]["price"]
    assert price["satoshis"] == 50_000
    assert price["fiat"]["currency"] == "USD" and price["fiat"]["cents"] == 2
    assert price["fiat"]["rate_per_bsv"] == 40


async def test_no_rate_means_503_not_a_guess(gateway, upstream) -> None:
    base = await gateway(POLICY.format(upstream=upstream.url))
    async with aiohttp.ClientSession() as http, http.post(f"{base}/ride") as r:
        assert r.status == 503
        assert (await r.json(content_type=None))["reason"] == "price-unavailable"
    assert upstream.seen == []
