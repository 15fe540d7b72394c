"""What a person reads on the paywall page (issue 17, points 1 and 3).

The page says what they get in the policy's words (never a route pattern or
`GET /path`), the price in their currency first where there is a rate with
satoshis beside it, in their locale's numbers; on a tab, what one use costs
and, apart, the top-up; the way to pay that suits their device; and a QR code
short enough to scan: a short checkout id whose ticket the store keeps.
"""

from __future__ import annotations

import html
import json
import re
import time
from decimal import Decimal
from urllib.parse import unquote

import aiohttp
import pytest
import segno

from gateway.payments.cashier import Cashier
from gateway.payments.checkout import LIFETIME, SHORT_KEPT, read_ticket
from gateway.payments.checkout import payment_uri as payment_uri_of
from gateway.pricing.rates import FixedRates
from gateway.store.memory import MemoryStore
from gateway.tokens import KeyRing, Tokens
from tests.chainkit import Tracker
from tests.conftest import PAID_SERVER
from tests.test_paid_access import FakeBroadcaster

BROWSER = "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"
DESKTOP_UA = (
    "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/131.0.0.0 Safari/537.36"
)
IPHONE_UA = (
    "Mozilla/5.0 (iPhone; CPU iPhone OS 18_1 like Mac OS X) AppleWebKit/605.1.15 "
    "(KHTML, like Gecko) Version/18.1 Mobile/15E148 Safari/604.1"
)

POLICY = """\
services:
  archive:
    upstream: {upstream}
    mount: /archive
    description: County records archive
    routes:
      - path: /records/{{id}}/pages/{{n}}
        price: {{eur_cents: 50}}
        grant: {{lasts: 1d, covers: resource}}
        description: One transcribed page of a parish register
      - path: /scans/{{id}}
        price: 1250
        grant: {{lasts: 1h, covers: resource}}
  opendata:
    upstream: {upstream}
    mount: /opendata
    description: Open data portal
    routes:
      - path: /export/{{dataset}}.csv
        price: 500
        grant: {{lasts: 1h, covers: route}}
        description: CSV exports of the open datasets
  transit:
    upstream: {upstream}
    mount: /transit
    description: City buses
    tabs: {{top_up: {{eur_cents: 1000}}}}
    routes:
      - path: /board
        price: {{eur_cents: 20}}
        meter: {{per: request}}
        description: Board a bus
"""


@pytest.fixture
async def site(gateway, upstream, tmp_path):
    store = MemoryStore()
    tokens = Tokens(KeyRing.load(tmp_path / "ring"))
    cashier = Cashier(
        PAID_SERVER, tracker=Tracker(), broadcaster=FakeBroadcaster(), store=store, tokens=tokens
    )  # type: ignore[arg-type]
    base = await gateway(
        POLICY.format(upstream=upstream.url),
        server_key=PAID_SERVER.public_key().hex(),
        tokens=tokens,
        cashier=cashier,
        store=store,
        cookie_secure=False,
        rates=FixedRates({"EUR": Decimal("40")}),  # 1 BSV = €40: €0.50 = 1,250,000 satoshis
    )
    return base, store, tokens


async def fetch(url: str, headers: dict[str, str] | None = None, method: str = "GET"):
    async with aiohttp.ClientSession() as http, http.request(method, url, headers=headers) as r:
        return r.status, r.headers.copy(), await r.text()


async def page_of(base: str, path: str, language: str = "en", **headers: str):
    sent = {"Accept": BROWSER, "Accept-Language": language, "User-Agent": DESKTOP_UA}
    sent.update({k.replace("_", "-"): v for k, v in headers.items()})
    status, got, page = await fetch(base + path, sent)
    assert status == 402 and got["Content-Type"].startswith("text/html"), page
    return page


def seen(page: str) -> str:
    """The words a person sees: no scripts, no "For programs" details, no markup."""
    body = page.split("<body>", 1)[1]
    body = re.sub(
        r"<script.*?</script>|<details>.*?</details>|<svg.*?</svg>", " ", body, flags=re.S
    )
    return " ".join(html.unescape(re.sub(r"<[^>]+>", " ", body)).split())


def payment_uri(page: str) -> str:
    found = re.search(r'id="payment-uri" href="([^"]+)"', page)
    assert found is not None
    return html.unescape(found.group(1))


def checkout_path(page: str) -> str:
    uri = unquote(payment_uri(page))
    return "/" + uri.split("&r=", 1)[1].split("/", 3)[3]


async def test_a_fiat_price_reads_in_euros_first_with_satoshis_beside(site) -> None:
    base, _, _ = site
    page = await page_of(base, "/archive/records/HLM-CR-1881/pages/3")
    text = seen(page)
    assert "County records archive" in text and "Payment required" in text
    assert "One transcribed page of a parish register" in text
    assert text.count("County records archive") == 1  # the service is named once
    assert "€0.50 (1,250,000 satoshis)" in text
    assert "Paid in satoshis at the current rate of €40.00 for 1 BSV." in text
    assert "You can open it as often as you like for 1 day." in text
    # No path, method or pattern in what a person reads.
    assert "HLM-CR-1881" not in text and "GET" not in text and "{" not in text
    # The path is there for programs, in the collapsed details.
    assert "GET /archive/records/HLM-CR-1881/pages/3" in page
    # The buttons say the satoshis too: the wallet asks to approve satoshis, not euros.
    assert "Pay €0.50 (1,250,000 satoshis) with my wallet" in text
    assert "Pay €0.50 (1,250,000 satoshis) with my wallet app" in text


async def test_a_satoshi_price_and_a_route_grant_in_words(site) -> None:
    base, _, _ = site
    text = seen(await page_of(base, "/archive/scans/77"))
    assert "1,250 satoshis" in text and "€" not in text
    assert "A small fee is charged for what you asked for." in text  # no description
    text = seen(await page_of(base, "/opendata/export/budget-2026.csv"))
    assert "Open data portal" in text and "CSV exports of the open datasets" in text
    assert "500 satoshis" in text
    # What a payment buys, without quoting the description the lead says already.
    assert "You can open everything of this kind as often as you like for 1 hour." in text
    assert text.count("CSV exports of the open datasets") == 1
    assert "{dataset}" not in text and ".csv" not in text
    assert "Pay 500 satoshis with my wallet" in text  # no fiat: the satoshis once


async def test_a_tab_says_what_one_use_costs_and_the_top_up_apart(site) -> None:
    base, _, _ = site
    page = await page_of(base, "/transit/board")
    text = seen(page)
    assert "Board a bus" in text
    assert "€0.20 (500,000 satoshis) for each use" in text
    assert (
        "You pay in advance: a top-up of €10.00 (25,000,000 satoshis), and each use is taken "
        "from that balance." in text
    )
    assert "A prepaid balance with City buses: each use is taken from it" in text
    # The wallet is asked for the top-up, and the button says it in both.
    assert "amount=0.25&" in payment_uri(page)
    assert "Pay €10.00 (25,000,000 satoshis) with my wallet" in text


async def test_the_qr_code_is_short_and_its_label_is_words(site) -> None:
    base, _, _ = site
    page = await page_of(base, "/archive/records/HLM-CR-1881/pages/3")
    uri = payment_uri(page)
    assert len(uri) <= 200, uri  # was ~600 with the signed ticket in r=
    short = checkout_path(page).rsplit("/", 1)[1]
    assert re.fullmatch(r"[a-z2-7]{24}", short)
    assert segno.make(uri, error="m", micro=False).version <= 9
    assert 'aria-label="QR code to pay 1,250,000 satoshis with a phone wallet"' in page
    label = re.search(r'role="img" aria-label="([^"]+)"', page).group(1)
    assert "bitcoin:" not in label and len(label) < 80


def test_a_long_service_name_does_not_make_the_code_dense() -> None:
    name = "Hollowmere County Council records archive and registry of births"
    uri = payment_uri_of("1MCyBUdze3dAMoCMA7Z5po1AQHRZ3R8YKp", 25, "https://x.example/c/1", name)
    label = unquote(uri.split("&label=", 1)[1].split("&", 1)[0])
    assert label == "Hollowmere County Council records" and len(label) <= 40
    assert "label=County%20records%20archive&" in payment_uri_of(
        "1A", 1, "u", "County records archive"
    )


async def test_a_short_checkout_id_finds_its_ticket_until_it_is_long_expired(site) -> None:
    base, store, tokens = site
    page = await page_of(base, "/archive/scans/5")
    path = checkout_path(page)
    status, _, answer = await fetch(base + path)
    assert status == 200 and json.loads(answer) == {"status": "pending"}
    short = path.rsplit("/", 1)[1]
    [ticket] = await store.bound("checkout:" + short)
    checkout = read_ticket(tokens, ticket)
    assert checkout is not None and checkout.resource == "/archive/scans/5"
    assert checkout.satoshis == 1250
    # The page's script polls the same short URL.
    assert f'data-status-url="{path}"' in page

    # An id nobody was given: a clear problem, for the page and the wallet.
    status, headers, answer = await fetch(f"{base}/.well-known/farebox/checkout/{'a' * 24}")
    problem = json.loads(answer)
    assert status == 404 and headers["Content-Type"] == "application/problem+json"
    assert problem["reason"] == "checkout-unknown"
    assert "reload the page" in problem["detail"]

    # Long after its checkout expired, the store has forgotten the id: the same problem.
    later = time.time() + LIFETIME + SHORT_KEPT + 1
    store._clock = lambda: later
    status, _, answer = await fetch(base + path)
    assert status == 404 and json.loads(answer)["reason"] == "checkout-unknown"


async def test_a_phone_gets_the_wallet_link_first_and_a_computer_the_button(site) -> None:
    base, _, _ = site
    path = "/archive/scans/9"
    desktop = await page_of(base, path)
    assert 'id="paywall"\n      class="desktop"' in desktop
    for hints in ({"User_Agent": IPHONE_UA}, {"Sec_CH_UA_Mobile": "?1"}):
        phone = await page_of(base, path, **hints)
        assert 'class="phone"' in phone
    assert 'class="phone"' not in await page_of(base, path, Sec_CH_UA_Mobile="?0")
    # Both ways are on both pages (the CSS shows the one for the device, and a
    # touch-only screen is a phone whatever its browser says); the phone's comes first.
    phone = await page_of(base, path, User_Agent=IPHONE_UA)
    assert phone.index('id="open-wallet"') < phone.index('id="pay-with-wallet"')
    assert "Pay 1,250 satoshis with my wallet app" in seen(phone)
    _, headers, _ = await fetch(base + path, {"Accept": BROWSER})
    assert "Sec-CH-UA-Mobile" in headers["Vary"] and "Accept-Language" in headers["Vary"]


async def test_spanish_is_picked_by_accept_language_with_its_numbers(site) -> None:
    base, _, _ = site
    page = await page_of(base, "/archive/records/HLM-CR-1881/pages/3", "es-ES,es;q=0.9,en;q=0.5")
    text = seen(page)
    assert '<html lang="es">' in page
    assert "Pago necesario" in text and "Precio" in text and "Cómo pagar" in text
    assert "0,50 € (1.250.000 satoshis)" in text
    assert "Puede abrirlo tantas veces como quiera durante 1 día." in text
    assert 'aria-label="Código QR para pagar 1.250.000 satoshis con el monedero del móvil"' in page
    assert "Esperando su pago…" in json.loads(
        re.search(r'id="paywall-texts" type="application/json">(.*?)</script>', page).group(1)
    ).get("status_waiting", "")
    # q-values decide, not the order; an unknown language falls back to English.
    assert '<html lang="es">' in await page_of(base, "/archive/scans/1", "en;q=0.4, es;q=0.8")
    assert '<html lang="en">' in await page_of(base, "/archive/scans/1", "zz-ZZ, x-klingon;q=0.9")
    assert "Pagar 0,50 € (1.250.000 satoshis) con mi monedero" in text
    opendata = seen(await page_of(base, "/opendata/export/budget-2026.csv", "es"))
    assert "Puede abrir todo lo de este tipo tantas veces como quiera durante 1 hora." in opendata
    assert "«" not in opendata  # no English description quoted inside a Spanish sentence
    # A region's numbers: Mexico groups thousands with commas.
    mexico = seen(await page_of(base, "/archive/scans/1", "es-MX"))
    assert "1,250 satoshis" in mexico and "Precio" in mexico


async def test_a_letter_currency_code_is_set_apart_from_its_digits(site) -> None:
    # CLDR writes euros in Mexican and Latin American Spanish as "EUR1.20" (Babel
    # applies no currency spacing): the page puts a no-break space between.
    base, _, _ = site
    for language in ("es-MX", "es-419"):
        page = await page_of(base, "/archive/records/HLM-CR-1881/pages/3", language)
        assert "EUR\u00a00.50 (1,250,000 satoshis)" in page
        assert "EUR\u00a040.00 por 1 BSV" in page
        assert not re.search(r"EUR\d", page)
    # Symbols stay as they were: "€0.50" in English, "0,50 €" in Spanish.
    assert "€0.50 (" in await page_of(base, "/archive/records/HLM-CR-1881/pages/3")
    assert "0,50\u00a0€" in await page_of(base, "/archive/records/HLM-CR-1881/pages/3", "es")


async def test_with_payments_off_the_page_says_so(gateway, upstream) -> None:
    # No chain configured, so no cashier: nothing on the page can take a payment.
    base = await gateway(
        POLICY.format(upstream=upstream.url), rates=FixedRates({"EUR": Decimal("40")})
    )
    page = await page_of(base, "/archive/records/HLM-CR-1881/pages/3")
    text = seen(page)
    assert "How to pay This service is not taking payments right now." in text
    assert "€0.50 (1,250,000 satoshis)" in text  # the price is still said
    for way in ('id="pay-with-wallet"', 'id="open-wallet"', "<svg", 'id="status"'):
        assert way not in page
    assert "Wallets and scripts can pay by BRC-121" not in page
    spanish = seen(await page_of(base, "/archive/scans/1", "es"))
    assert "Cómo pagar Este servicio no acepta pagos en este momento." in spanish


def test_a_refusal_s_detail_is_marked_english_and_escaped() -> None:
    """The gateway's reason for refusing a payment is English whatever the
    page's language: a screen reader must read it as English (WCAG 3.1.2),
    and it is text, never markup."""
    from gateway.challenge.paywall import Money, Page, render

    page = Page(
        service_title="Archive",
        what="",
        covers="resource",
        lasts=3600,
        method="GET",
        resource="/a",
        satoshis=25,
        price=Money(25),
        server="02" + "ab" * 32,
        pay_url="/pay",
        wallet_url="http://localhost:3321",
        refused="output 0 pays <b>nobody</b>",
    )
    text = render(page, "es")
    assert '<span lang="en">output 0 pays &lt;b&gt;nobody&lt;/b&gt;</span>' in text
    assert "<b>nobody</b>" not in text
