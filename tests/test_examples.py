"""The example policies end to end, one public-sector case each.

Everything is what `farebox demo` runs: the policies in `policies/` (with
the upstream URL pointed at this test's port), the demo's settings and fiat
rates, the sample upstream, a devnet taking real signed transactions. A
client wallet is funded from the devnet's faucet and pays with
`PayingSession`; the assertions are what its user sees: status, the
upstream's content, satoshis paid, and for prepaid tabs the charge and
balance of every answer.

  open data   free search, three free queries a day then paid, a day pass
              for exports, a bulk download metered per MB from a tab
  archive     a page per payment, re-read free for a day
  meter       prepaid electricity: a tab charged per kWh the meter reports
  transit     a prepaid card: a tab charged a euro fare per ride
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from bsv import PrivateKey

from gateway.chain.local import LocalBroadcaster
from gateway.client import PayingSession, Wallet, fund
from gateway.demo import upstream
from gateway.demo.run import DEMO_RATE_EUR, UPSTREAM_PORT, demo_settings
from gateway.devnet import Devnet, TxStatus
from gateway.devnet import start as start_devnet
from gateway.payments.cashier import Cashier
from gateway.pipeline.credentials import Revocations
from gateway.pipeline.gateway import MAX_HEADER_BYTES
from gateway.policy.reload import PolicyHolder
from gateway.pricing.tabs import sats
from gateway.proxy.forward import Proxy
from gateway.serve.assemble import assemble_gateway, open_rates
from gateway.services import Services
from gateway.store.memory import MemoryStore
from gateway.tokens import KeyRing, Tokens

EXAMPLES = Path(__file__).resolve().parent.parent / "policies"
DEMO_UPSTREAM = f"http://127.0.0.1:{UPSTREAM_PORT}"
FUNDS = 20_000
DAY = 86400


@dataclass
class Demo:
    base: str  # the gateway
    devnet: Devnet
    devnet_url: str
    store: MemoryStore

    def url(self, path: str) -> str:
        return self.base + path


@pytest.fixture
async def demo(tmp_path: Path) -> AsyncIterator[Demo]:
    """The demo's pieces on free ports, in this process."""
    cleanups = []
    sample = await upstream.start("127.0.0.1", 0)
    cleanups.append(sample.cleanup)
    devnet_runner, devnet = await start_devnet("127.0.0.1", 0, devnet=Devnet())
    cleanups.append(devnet_runner.cleanup)
    folder = tmp_path / "policies"
    folder.mkdir()
    for example in sorted(EXAMPLES.glob("*.yaml")):
        text = example.read_text()
        assert DEMO_UPSTREAM in text, f"{example.name} no longer uses the demo upstream"
        folder.joinpath(example.name).write_text(
            text.replace(DEMO_UPSTREAM, f"http://127.0.0.1:{sample.addresses[0][1]}")
        )
    settings = demo_settings("127.0.0.1", 0, folder)
    identity = PrivateKey()
    tokens = Tokens(KeyRing.load(tmp_path / "token-keys"))
    store = MemoryStore()
    cashier = Cashier(
        identity, tracker=devnet, broadcaster=LocalBroadcaster(devnet), store=store, tokens=tokens
    )
    proxy = Proxy(connect_timeout=settings.connect_timeout, read_timeout=settings.read_timeout)
    await proxy.start()
    cleanups.append(proxy.close)
    services = Services(
        PolicyHolder.load(folder),
        identity.public_key().hex(),
        tokens=tokens,
        cashier=cashier,
        cookie_secure=settings.cookie_secure,
        store=store,
        revocations=Revocations(store),
        rates=open_rates(settings, cleanups),
    )
    gateway = assemble_gateway(services, proxy)
    runner = web.ServerRunner(
        web.Server(gateway.handle, access_log=None, max_field_size=MAX_HEADER_BYTES)
    )
    await runner.setup()
    cleanups.append(runner.cleanup)
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    try:
        yield Demo(
            f"http://127.0.0.1:{runner.addresses[0][1]}",
            devnet,
            f"http://127.0.0.1:{devnet_runner.addresses[0][1]}",
            store,
        )
    finally:
        for cleanup in reversed(cleanups):
            await cleanup()


@pytest.fixture
async def wallet(demo: Demo, tmp_path: Path) -> Wallet:
    w = Wallet.create(tmp_path / "wallet" / "wallet.json")
    await fund(w, FUNDS, demo.devnet_url)
    return w


def spent_from(wallet: Wallet, session: PayingSession) -> int:
    """What the wallet lost: prices paid plus miners' fees."""
    return FUNDS - wallet.balance().satoshis - session.fees


async def unpaid(demo: Demo, method: str, path: str) -> tuple[int, dict[str, str], dict]:
    """A request without any wallet: status, headers, JSON body."""
    async with aiohttp.ClientSession() as http, http.request(method, demo.url(path)) as resp:
        return resp.status, dict(resp.headers), json.loads(await resp.read())


# --- records archive: a page per payment, re-read for a day -------------------------


async def test_archive_page_is_paid_once_and_reread_for_a_day(demo: Demo, wallet: Wallet) -> None:
    page = "/archive/records/HLM-CR-1881/pages/{}"
    async with PayingSession(wallet, max_per_request=100) as s:
        async with s.get(demo.url("/archive/records/search"), params={"q": "census"}) as resp:
            assert resp.status == 200 and resp.farebox_payment is None
            assert [hit["id"] for hit in await resp.json()] == ["HLM-CR-1851", "HLM-CR-1881"]
        async with s.get(demo.url("/archive/records/HLM-CR-1881")) as resp:
            assert resp.status == 200 and (await resp.json())["pages"] == 20

        async with s.get(demo.url(page.format(1))) as resp:
            assert resp.status == 200, await resp.text()
            assert await resp.text() == upstream.page_text("HLM-CR-1881", 1)
            paid = resp.farebox_payment
        assert paid is not None and paid.satoshis == 25
        assert paid.grant is not None and paid.grant.covers == "resource"
        assert paid.grant.scope == page.format(1)
        assert abs(paid.grant.expires - (time.time() + DAY)) < 60  # re-readable for 24 hours
        assert demo.devnet.status(paid.txid).status == TxStatus.SEEN_ON_NETWORK

        async with s.get(demo.url(page.format(1))) as resp:  # re-read: free
            assert resp.status == 200 and resp.farebox_used_token
            assert await resp.text() == upstream.page_text("HLM-CR-1881", 1)
        async with s.get(demo.url(page.format(2))) as resp:  # another page: paid again
            assert resp.status == 200
            assert await resp.text() == upstream.page_text("HLM-CR-1881", 2)
            assert resp.farebox_payment is not None and resp.farebox_payment.satoshis == 25
        assert s.spent == 50 and len(s.payments) == 2
        assert spent_from(wallet, s) == 50

    # Tomorrow's reader, in a new process, finds the grant in the wallet file.
    async with PayingSession(Wallet.open(wallet.path)) as s, s.get(demo.url(page.format(1))) as r:
        assert r.status == 200 and r.farebox_used_token and s.spent == 0


# --- open data: free, free quota then paid, day pass ------------------------------


async def test_opendata_search_is_free_and_queries_are_free_three_times_a_day(
    demo: Demo, wallet: Wallet
) -> None:
    query = {"dataset": "bus-punctuality", "where": "route=7X", "limit": "5"}
    async with PayingSession(wallet) as s:
        async with s.get(demo.url("/opendata/datasets")) as resp:
            assert {d["id"] for d in await resp.json()} == {"air-quality", "bus-punctuality"}
        async with s.get(demo.url("/opendata/search"), params={"q": "fenside"}) as resp:
            assert resp.status == 200 and resp.farebox_payment is None
            assert len(await resp.json()) == upstream.SEARCH_MAX_ROWS

        for left in (2, 1, 0):
            async with s.get(demo.url("/opendata/query"), params=query) as resp:
                assert resp.status == 200 and resp.farebox_payment is None
                assert resp.headers["RateLimit-Limit"] == "3"
                assert resp.headers["RateLimit-Remaining"] == str(left)
                rows = await resp.json()
                assert len(rows) == 5 and {row["route"] for row in rows} == {"7X"}
        assert s.spent == 0

        # The fourth query of the day costs 10 satoshis, and opens five
        # minutes of queries, whatever they ask.
        async with s.get(demo.url("/opendata/query"), params=query) as resp:
            assert resp.status == 200
            assert len(await resp.json()) == 5
            paid = resp.farebox_payment
        assert paid is not None and paid.satoshis == 10
        assert paid.grant is not None and paid.grant.scope == "/opendata/query"
        assert abs(paid.grant.expires - (time.time() + 300)) < 60
        other = {"dataset": "air-quality", "where": "station=Quay Road", "limit": "3"}
        async with s.get(demo.url("/opendata/query"), params=other) as resp:
            assert resp.status == 200 and resp.farebox_used_token
            assert [row["station"] for row in await resp.json()] == ["Quay Road"] * 3
        assert s.spent == 10
    assert spent_from(wallet, s) == 10

    # Without a wallet the fourth query is a 402 that says when the quota returns.
    status, headers, problem = await unpaid(demo, "GET", "/opendata/query?dataset=air-quality")
    assert status == 402 and headers["x-bsv-sats"] == "10"
    assert headers["RateLimit-Remaining"] == "0" and int(headers["Retry-After"]) > 0
    assert problem["payment"]["grant"]["lasts_seconds"] == 300


async def test_opendata_day_pass_opens_every_export(demo: Demo, wallet: Wallet) -> None:
    async with PayingSession(wallet, max_per_request=500) as s:
        async with s.get(demo.url("/opendata/export/air-quality.csv")) as resp:
            assert resp.status == 200 and resp.content_type == "text/csv"
            assert await resp.read() == upstream.dataset_csv("air-quality")
            paid = resp.farebox_payment
        assert paid is not None and paid.satoshis == 200
        assert paid.grant is not None and paid.grant.covers == "route"
        assert paid.grant.scope == "/opendata/export/{dataset}.csv"
        assert abs(paid.grant.expires - (time.time() + DAY)) < 60

        # Every other export, and the first again, for the rest of the day.
        for dataset in ("bus-punctuality", "air-quality"):
            async with s.get(demo.url(f"/opendata/export/{dataset}.csv")) as resp:
                assert resp.status == 200 and resp.farebox_used_token
                assert await resp.read() == upstream.dataset_csv(dataset)
        # The pass covers exports, not the metered bulk downloads.
        async with s.get(demo.url("/opendata/bulk/bus-punctuality.csv")) as resp:
            assert resp.status == 200
            assert resp.farebox_payment is not None
            assert resp.farebox_payment.grant is not None
            assert resp.farebox_payment.grant.covers == "tab"
        assert [p.satoshis for p in s.payments] == [200, 500]


# --- open data: bulk downloads metered per MB from a prepaid tab ------------------


def per_mb(size: int, satoshis_per_mb: int = 10) -> Decimal:
    """What `size` bytes cost, as the gateway rounds it (up, to a msat)."""
    return Decimal(sats(math.ceil(size * satoshis_per_mb * 1000 / 1_000_000)))


async def test_opendata_bulk_download_is_charged_per_mb_from_a_tab(
    demo: Demo, wallet: Wallet
) -> None:
    air = upstream.bulk_csv("air-quality")
    bus = upstream.bulk_csv("bus-punctuality")
    status, headers, problem = await unpaid(demo, "GET", "/opendata/bulk/air-quality.csv")
    assert status == 402 and headers["x-bsv-sats"] == "500"  # the smallest top-up
    assert problem["payment"]["tab"]["per"] == "mb"
    assert problem["payment"]["tab"]["most_satoshis"] == "50"  # 5 MB at 10 satoshis

    async with PayingSession(wallet) as s:
        async with s.get(demo.url("/opendata/bulk/air-quality.csv")) as resp:
            assert resp.status == 200, await resp.text()
            assert await resp.read() == air
            paid = resp.farebox_payment
            charged = resp.farebox_charge
            left = resp.farebox_balance
            tab = resp.farebox_tab
        assert paid is not None and paid.satoshis == 500 and paid.tab == tab
        assert 20 < charged == per_mb(len(air)) < 25  # 2.2 MB at 10 satoshis a MB
        assert left == 500 - charged

        async with s.get(demo.url("/opendata/bulk/bus-punctuality.csv")) as resp:
            assert resp.status == 200 and await resp.read() == bus
            assert resp.farebox_payment is None and resp.farebox_tab == tab
            assert resp.farebox_charge == per_mb(len(bus))
            assert resp.farebox_balance == 500 - per_mb(len(air)) - per_mb(len(bus))
        # A dataset the upstream does not have costs nothing.
        async with s.get(demo.url("/opendata/bulk/unicorns.csv")) as resp:
            assert resp.status == 404 and resp.farebox_charge == 0
            assert resp.farebox_payment is None

        balance = await s.tab_balance(demo.url("/opendata/"))
        assert balance is not None and balance.tab == tab
        assert balance.satoshis == 500 - per_mb(len(air)) - per_mb(len(bus))
        assert s.spent == 500 and len(s.payments) == 1
    assert spent_from(wallet, s) == 500  # the top-up; what is left stays on the tab

    # Paid queries and day passes stay grants: the tab is not drawn on for them.
    async with PayingSession(wallet, max_per_request=500) as s:
        async with s.get(demo.url("/opendata/export/air-quality.csv")) as resp:
            assert resp.status == 200 and resp.farebox_payment is not None
            assert resp.farebox_payment.satoshis == 200
            assert resp.farebox_charge is None
        again = await s.tab_balance(demo.url("/opendata/"))
        assert again is not None and again.satoshis == balance.satoshis


# --- utility meter: prepaid electricity, charged per kWh ---------------------------


async def test_meter_draws_are_charged_per_kwh_from_a_prepaid_tab(
    demo: Demo, wallet: Wallet
) -> None:
    draw = "/meter/meters/M-1001/draw"
    async with PayingSession(wallet) as s:
        async with s.get(demo.url("/meter/meters/M-1001/reading")) as resp:  # free
            assert resp.status == 200 and resp.farebox_payment is None
            assert (await resp.json())["reading_kwh"] == upstream.current_reading("M-1001")

        # The first draw opens a tab with the smallest top-up, 1000 satoshis.
        async with s.post(demo.url(draw), json={"kwh": 3.5}) as resp:
            assert resp.status == 200, await resp.text()
            body = await resp.json()
            assert body["status"] == "supplied" and body["kwh"] == 3.5
            paid, tab = resp.farebox_payment, resp.farebox_tab
            assert (resp.farebox_charge, resp.farebox_balance) == (140, 860)  # 3.5 kWh x 40
        assert paid is not None and paid.satoshis == 1000 and paid.tab == tab
        assert paid.grant is not None and paid.grant.scope == "/meter/**"
        assert demo.devnet.status(paid.txid).status == TxStatus.SEEN_ON_NETWORK

        async with s.post(demo.url(draw), json={"kwh": 2.25}) as resp:
            assert resp.status == 200 and resp.farebox_payment is None
            assert (resp.farebox_charge, resp.farebox_balance) == (90, 770)
            assert resp.farebox_tab == tab

        # Failures cost nothing: a meter that does not answer, a refused draw.
        async with s.post(demo.url("/meter/meters/offline/draw"), json={"kwh": 1}) as resp:
            assert resp.status == 503
            assert (resp.farebox_charge, resp.farebox_balance) == (0, 770)
        async with s.post(demo.url(draw), json={"kwh": 12}) as resp:
            assert resp.status == 400
            assert (resp.farebox_charge, resp.farebox_balance) == (0, 770)
        balance = await s.tab_balance(demo.url("/meter/"))
        assert balance is not None and (balance.tab, balance.satoshis) == (tab, 770)

        # Two 10 kWh draws: the second needs 400 satoshis held, the tab has
        # 370: the session tops the same tab up and draws.
        async with s.post(demo.url(draw), json={"kwh": 10}) as resp:
            assert (resp.farebox_charge, resp.farebox_balance) == (400, 370)
        async with s.post(demo.url(draw), json={"kwh": 10}) as resp:
            assert resp.status == 200
            assert resp.farebox_payment is not None and resp.farebox_payment.satoshis == 1000
            assert resp.farebox_tab == tab  # topped up, not a new tab
            assert (resp.farebox_charge, resp.farebox_balance) == (400, 970)
        assert s.spent == 2000 and len(s.payments) == 2
    assert spent_from(wallet, s) == 2000
    assert await demo.store.balance(tab) == 970_000  # msat, on the gateway's side


# --- transit: a prepaid card, a fare in euros per ride ----------------------------


def eur_satoshis(cents: int) -> int:
    """Euro cents in satoshis at the demo's rate, rounded up as the gateway does."""
    return math.ceil(Decimal(cents) / 100 / Decimal(str(DEMO_RATE_EUR)) * 100_000_000)


async def test_transit_rides_are_a_euro_fare_from_a_prepaid_card(
    demo: Demo, wallet: Wallet
) -> None:
    fare, card = eur_satoshis(120), eur_satoshis(800)
    assert (fare, card) == (150, 1000)
    status, headers, problem = await unpaid(demo, "POST", "/transit/lines/T1/board")
    assert status == 402 and headers["x-bsv-sats"] == str(card)
    assert problem["payment"]["tab"]["unit_price"] == {"satoshis": str(fare)}
    assert problem["payment"]["grant"]["covers"] == "tab"

    async with PayingSession(wallet) as s:
        async with s.get(demo.url("/transit/lines/T1/timetable")) as resp:
            assert resp.status == 200 and resp.farebox_payment is None
            assert (await resp.json())["departures"][0] == "05:30"

        async with s.post(demo.url("/transit/lines/T1/board")) as resp:
            assert resp.status == 200, await resp.text()
            ticket = await resp.json()
            paid, tab = resp.farebox_payment, resp.farebox_tab
            assert (resp.farebox_charge, resp.farebox_balance) == (fare, card - fare)
        assert ticket["line"] == "T1" and ticket["boarded_at"]["name"] == "Quay Road"
        assert ticket["ticket"].startswith("HT-") and ticket["valid_minutes"] == 90
        assert paid is not None and paid.satoshis == card and paid.tab == tab

        async with s.post(demo.url("/transit/lines/7X/board"), json={"stop": "HM009"}) as resp:
            assert resp.status == 200 and resp.farebox_payment is None
            assert (await resp.json())["boarded_at"]["name"] == "College"
            assert (resp.farebox_charge, resp.farebox_balance) == (fare, card - 2 * fare)

        # A refused boarding (no such line, a stop the line does not serve) is free.
        for line, body in (("T9", None), ("7X", {"stop": "HM002"})):
            async with s.post(demo.url(f"/transit/lines/{line}/board"), json=body) as resp:
                assert resp.status in (400, 404)
                assert (resp.farebox_charge, resp.farebox_balance) == (0, card - 2 * fare)
        assert s.spent == card and len(s.payments) == 1

        # The card is the transit service's: the meter's tab is another one.
        async with s.post(demo.url("/meter/meters/M-7/draw"), json={"kwh": 1}) as resp:
            assert resp.status == 200 and resp.farebox_tab != tab
            assert resp.farebox_payment is not None and resp.farebox_payment.satoshis == 1000
    assert spent_from(wallet, s) == card + 1000
